// Loaded as a classic script before the modules, so that a module that fails
// to load or throws at start-up still leaves a trace for people and tests.
// Keeps the last entries of console output and uncaught errors in memory.
(function () {
  "use strict";
  const limit = 500;
  const entries = [];
  function push(level, args) {
    const text = Array.prototype.map
      .call(args, (a) => {
        if (a instanceof Error) return a.name + ": " + a.message;
        if (typeof a === "string") return a;
        try {
          return JSON.stringify(a);
        } catch {
          return String(a);
        }
      })
      .join(" ");
    entries.push({ t: new Date().toISOString(), level, text });
    if (entries.length > limit) entries.splice(0, entries.length - limit);
  }
  for (const level of ["log", "info", "warn", "error", "debug"]) {
    const original = console[level].bind(console);
    console[level] = function () {
      push(level, arguments);
      original.apply(null, arguments);
    };
  }
  window.addEventListener(
    "error",
    (event) => {
      if (event.target && event.target !== window && event.target.src) {
        push("error", ["failed to load " + event.target.src]);
      } else {
        push("error", [
          "uncaught: " + event.message + " at " + event.filename + ":" + event.lineno,
        ]);
      }
    },
    true,
  );
  window.addEventListener("unhandledrejection", (event) => {
    push("error", ["unhandled rejection:", event.reason]);
  });
  window.videochatConsole = () => entries.slice();
})();
