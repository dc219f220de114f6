// Bundle entry: exposes supertokens-website@4.2.0 to plain <script> pages.
//
// window.supertokens is the package's default export (the fetch-based
// AuthHttpRequest class), i.e. what `import SuperTokens from
// "supertokens-website"` gives an application:
//   supertokens.init({refreshTokenUrl, sessionExpiredStatusCode, ...})
//     patches window.fetch (unless viaInterceptor: false)
//   supertokens.doesSessionExist()          -> boolean (synchronous)
//   supertokens.attemptRefreshingSession()  -> Promise<boolean>
//   supertokens.fetch/get/post/put/delete(url, init) -> Promise<Response>
//
// window.supertokensModule is the whole module namespace (AntiCsrfToken,
// getIDFromCookie, setIDToCookie, onUnauthorisedResponse, handleUnauthorised,
// getDomainFromUrl, default) for tests that need to look inside.
//
// The axios flavour (supertokens-website/axios: makeSuper, axios, ...) is
// deliberately not bundled: it needs the axios peer dependency.
import * as supertokensModule from "supertokens-website";

const supertokens = supertokensModule.default;

window.supertokens = supertokens;
window.supertokensModule = supertokensModule;
