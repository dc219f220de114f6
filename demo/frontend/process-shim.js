// supertokens-website@4.2.0 (lib/build/processState.js) evaluates
// `process !== undefined && process.env !== undefined && process.env.TEST_MODE`
// on every intercepted request. In a browser `process` is undeclared, so that
// would throw a ReferenceError. esbuild's --inject replaces every free
// `process` reference in the bundle with this object.
export const process = { env: {} };
