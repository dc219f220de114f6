// The demo page. Every API call goes through window.fetch, which
// supertokens.init() patches: the SDK adds the anti-csrf header, and on the
// session-expired status it calls the refresh endpoint once (one refresh for
// all parallel calls and tabs) and retries. If the SDK hands back the
// session-expired status itself, the session is over.
(function () {
  "use strict";

  const body = document.body;
  const EXPIRED_STATUS = Number(body.dataset.expiredStatus || 440);
  const xsrfMeta = document.querySelector('meta[name="xsrf-token"]');
  const XSRF_TOKEN = xsrfMeta ? xsrfMeta.content : null;

  supertokens.init({
    refreshTokenUrl: body.dataset.refreshUrl,
    // supertokens-website 4.x defaults to 401; the server answers 440.
    sessionExpiredStatusCode: EXPIRED_STATUS,
  });

  const $ = (id) => document.getElementById(id);

  class SessionEnded extends Error {}

  function setStatus(message, isError) {
    const el = $("status");
    el.textContent = message || "";
    el.classList.toggle("error", Boolean(isError));
  }

  // One JSON call through the SDK-patched fetch.
  async function api(method, url, payload) {
    const headers = { Accept: "application/json" };
    const init = { method, headers };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    if (XSRF_TOKEN && method !== "GET") headers["X-XSRFToken"] = XSRF_TOKEN; // Tornado's xsrf_cookies
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      // The SDK rejects with the refresh call's Response when refreshing failed
      // for another reason than an ended session (e.g. 503: database down).
      if (err instanceof Response) throw new Error(`refreshing the session failed (HTTP ${err.status})`);
      throw err;
    }
    if (response.status === EXPIRED_STATUS) {
      showSignedOut("Your session has ended: please sign in again.", true);
      throw new SessionEnded("session ended");
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.message || `HTTP ${response.status}`);
    return data;
  }

  // Runs an action; reports errors in the status line.
  async function run(action, doneMessage) {
    try {
      await action();
      if (doneMessage) setStatus(doneMessage);
    } catch (err) {
      if (!(err instanceof SessionEnded)) setStatus(err.message || String(err), true);
    }
  }

  function showSignedOut(message, isError) {
    body.dataset.state = "signed-out";
    $("signed-in").hidden = true;
    $("signed-out").hidden = false;
    $("user-id").textContent = "";
    setStatus(message, isError);
    $("user").focus();
  }

  function showSignedIn() {
    body.dataset.state = "signed-in";
    $("signed-out").hidden = true;
    $("signed-in").hidden = false;
  }

  function renderSessions(list) {
    const ul = $("sessions");
    ul.replaceChildren();
    for (const s of list) {
      const li = document.createElement("li");
      li.dataset.handle = s.handle;
      const left = document.createElement("div");
      const code = document.createElement("code");
      code.textContent = s.handle;
      left.append(code);
      if (s.current) {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = "this browser";
        left.append(tag);
      }
      const info = s.sessionInfo && typeof s.sessionInfo === "object" ? s.sessionInfo : {};
      if (info.createdAt) {
        const when = document.createElement("div");
        when.className = "muted";
        when.textContent = `since ${info.createdAt}`;
        left.append(when);
      }
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary revoke";
      button.textContent = "Revoke";
      button.addEventListener("click", () => run(() => revoke(s.handle)));
      li.append(left, button);
      ul.append(li);
    }
  }

  async function loadAll() {
    const [me, info, sessions] = await Promise.all([
      api("GET", "/api/me"),
      api("GET", "/api/session-info"),
      api("GET", "/api/sessions"),
    ]);
    showSignedIn();
    $("user-id").textContent = me.userId;
    $("session-handle").textContent = me.handle;
    $("jwt-payload").textContent = JSON.stringify(me.jwtPayload, null, 2);
    $("counter").textContent = String(me.counter);
    $("session-info").value = JSON.stringify(info.sessionInfo, null, 2);
    renderSessions(sessions.sessions);
  }

  async function revoke(handle) {
    const result = await api("DELETE", `/api/sessions/${encodeURIComponent(handle)}`);
    if (result.current) {
      showSignedOut("This session was revoked.");
      return;
    }
    renderSessions((await api("GET", "/api/sessions")).sessions);
    setStatus(`Session ${handle} revoked.`);
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    run(async () => {
      // Through the SDK's fetch: it reads the id-refresh-token and anti-csrf
      // response headers (a plain form post would hide them from it).
      const response = await fetch(form.action, {
        method: "POST",
        headers: { Accept: "application/json" },
        body: new URLSearchParams(new FormData(form)),
      });
      const data = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(data.message || `HTTP ${response.status}`);
      form.reset();
      await loadAll();
      setStatus(`Signed in as ${data.userId}.`);
    });
  });

  $("logout").addEventListener("click", () =>
    run(async () => {
      await api("POST", "/api/logout");
      showSignedOut("Signed out.");
    })
  );

  $("reload").addEventListener("click", () => run(loadAll, "Reloaded."));

  $("increment").addEventListener("click", () =>
    run(async () => {
      $("counter").textContent = String((await api("POST", "/api/counter")).counter);
    }, "Counter incremented.")
  );

  $("save-info").addEventListener("click", () =>
    run(async () => {
      let value;
      try {
        value = JSON.parse($("session-info").value);
      } catch (err) {
        throw new Error("Session info must be valid JSON.");
      }
      const result = await api("PUT", "/api/session-info", { sessionInfo: value });
      $("session-info").value = JSON.stringify(result.sessionInfo, null, 2);
    }, "Session info saved.")
  );

  // First paint: the SDK's own cookie (sIRTFrontend) says whether a session exists.
  if (supertokens.doesSessionExist()) {
    showSignedIn();
    run(loadAll);
  } else {
    showSignedOut("");
  }
})();
