/* tornado-signin's browser client, served at <prefix>/signin.js.
 *
 * It does the whole page side of Google's server-side (one-time code) flow on
 * the host page's own button: the single-use state, the popup (Google Identity
 * Services by default, the legacy gapi.auth2 as an option), the code POST to
 * <prefix>/storeauthcode and the confirmation socket <prefix>/confirm. It needs
 * no inline script and no eval, so it runs under a nonce-based CSP.
 *
 * Load it with its configuration on the tag (data- attributes) or in a JSON
 * element (type="application/json", id "tornado-signin-config" or the id named
 * by data-config); data- attributes win:
 *
 *   <script src="/auth/signin.js" nonce="…" defer
 *           data-client-id="….apps.googleusercontent.com"
 *           data-scope="openid email https://www.googleapis.com/auth/drive.appdata"
 *           data-library="gis"                      (or "gapi", legacy: see below)
 *           data-script-url="https://accounts.google.com/gsi/client"></script>
 *
 *   Keys (attribute / JSON): data-prefix / prefix (default: the folder signin.js
 *   was served from, "/auth"), data-client-id / clientId, data-scope / scope,
 *   data-library / library, data-script-url / scriptUrl. The JSON form may also
 *   carry the first state and session the server rendered into the page
 *   (state, user, needsConsent), which saves the requests below.
 *
 * API (window.TornadoSignin):
 *
 *   var signin = TornadoSignin.mount(buttonElement, {
 *     onSignedIn: function (user, info) {},   // user {sub, email, name}; info {accessExpiresAt}
 *     onSignedOut: function (reason) {},      // "signed_out" | "disconnected" | "ended" (elsewhere)
 *     onConsentRequired: function () {},      // Google sent no refresh token: click again to consent
 *     onFailed: function (reason) {},         // a short reason ("code rejected by google", "library_init_failed: …")
 *     onStatus: function (text, kind) {},     // optional: a ready-made English line for a status element
 *     onAccessExpiring: function (expiresAt) {}  // optional: time-limited access ends soon (Unix seconds)
 *   });
 *   signin.signIn()                 // what a click on the button does; returns a Promise of the outcome
 *   signin.requestScopes([scope])   // extra scopes on demand (incremental consent, include_granted_scopes,
 *                                   // login_hint = the signed-in user's email); call it from a click handler
 *   signin.signOut()                // POST <prefix>/signout; Promise of true when signed out
 *   signin.disconnect()             // POST <prefix>/disconnect (revoke at Google, forget); Promise of true
 *   signin.user                     // the signed-in user or null
 *
 * Outcomes resolve {status: "signed_in", user} | {status: "consent_required"} |
 * {status: "failed", reason} | {status: "cancelled", reason}; promises never reject.
 * The button is disabled until Google's library is ready, hidden while signed in.
 *
 * Requests: on load, GET <prefix>/session and GET <prefix>/state unless the page
 * carries them. A sign-in is then one POST: every answer of /storeauthcode and
 * every socket frame that ends an attempt carries the next state.
 *
 * Whatever order the POST's answer and the socket's frame arrive in, the status
 * shows the most specific outcome: the first of the two ends an attempt, the
 * other only brings its state; a "signed_out" frame never replaces
 * "Disconnected…", and a frame of an earlier attempt never undoes a newer one
 * (the session's last frame, replayed to a socket that connects late, is shown
 * only when it is news: a sign-in, or the outcome of an answer that was lost).
 *
 * gapi.auth2 is legacy only: Google refuses it for OAuth client ids created
 * after July 2022 (gapi.auth2.init fails with idpiframe_initialization_failed);
 * the client waits for init and reports that failure through onFailed/onStatus.
 * gapi has no login_hint for grantOfflineAccess: extra scopes then show the
 * account chooser.
 */
// @ts-check
(function () {
  "use strict";

  /**
   * @typedef {{sub: string, email?: string, name?: string}} User
   * @typedef {{status: string, user?: User, reason?: string}} Outcome
   * @typedef {{
   *   onSignedIn?: (user: User, info: {accessExpiresAt: (number|null)}) => void,
   *   onSignedOut?: (reason: string) => void,
   *   onConsentRequired?: () => void,
   *   onFailed?: (reason: string) => void,
   *   onStatus?: (text: string, kind: string) => void,
   *   onAccessExpiring?: (expiresAt: number) => void,
   *   onReady?: () => void
   * }} Callbacks
   * @typedef {{prefix: string, clientId: string, scope: string, library: string, scriptUrl: string,
   *            state?: (string|null), user?: (User|null), needsConsent?: boolean}} Config
   */

  var SCRIPT = /** @type {HTMLScriptElement|null} */ (document.currentScript);
  var QUOTED = "\u201cSign in with Google\u201d";

  /** @returns {Config} */
  function readConfig() {
    /** @type {Object<string, any>} */
    var doc = {};
    var data = SCRIPT ? SCRIPT.dataset : {};
    var element = document.getElementById(data.config || "tornado-signin-config");
    if (element && element.textContent) { doc = JSON.parse(element.textContent); }
    var prefix = data.prefix !== undefined ? data.prefix : doc.prefix;
    if (prefix === undefined && SCRIPT && SCRIPT.src) {
      prefix = new URL(SCRIPT.src, location.href).pathname.replace(/\/signin\.js$/, "");
    }
    return {
      prefix: String(prefix || "").replace(/\/$/, ""),
      clientId: data.clientId || doc.clientId || "",
      scope: data.scope || doc.scope || "openid email",
      library: (data.library || doc.library || "gis") === "gapi" ? "gapi" : "gis",
      scriptUrl: data.scriptUrl || doc.scriptUrl ||
        ((data.library || doc.library) === "gapi" ? "https://apis.google.com/js/platform.js"
                                                  : "https://accounts.google.com/gsi/client"),
      state: doc.state,
      user: doc.user,
      needsConsent: doc.needsConsent
    };
  }

  /** @param {string} a @param {string} b @returns {string} the union, in order, without repeats */
  function joinScopes(a, b) {
    /** @type {Object<string, boolean>} */
    var seen = {};
    /** @type {string[]} */
    var out = [];
    (a + " " + b).split(/\s+/).forEach(function (scope) {
      if (scope && !seen[scope]) { seen[scope] = true; out.push(scope); }
    });
    return out.join(" ");
  }

  /** @param {string} src @param {string|undefined} nonce @returns {Promise<void>} */
  function loadScript(src, nonce) {
    return new Promise(function (resolve, reject) {
      var tag = document.createElement("script");
      tag.async = true;
      tag.src = src;
      if (nonce) { tag.nonce = nonce; }
      tag.onload = function () { resolve(); };
      tag.onerror = function () { reject(new Error("script_load_failed")); };
      document.head.appendChild(tag);
    });
  }

  /**
   * Mount the sign-in on `button`. Return the controller described in the header.
   * @param {HTMLButtonElement} button
   * @param {Callbacks} [callbacks]
   */
  function mount(button, callbacks) {
    var on = callbacks || {};
    var config = readConfig();
    var url = function (/** @type {string} */ path) { return config.prefix + path; };
    /** @type {string|null} */
    var nextState = config.state || null;
    /** @type {Object<string, boolean>} states already sent: a replayed frame never brings one back */
    var spent = {};
    var needsConsent = !!config.needsConsent;
    /** @type {"loading"|"signed_in"|"signed_out"} */
    var view = "loading";
    var attemptSeq = 0;
    var answerLost = false;
    /** @type {{id: number, done: boolean, posting: boolean, promise: Promise<Outcome>, resolve: (o: Outcome) => void}|null} */
    var attempt = null;
    /** @type {{kind: string, frameSeen: boolean}|null} */
    var leaving = null;
    /** @type {((options: {scope: string, hint: string}) => void)|null} */
    var requestCode = null;
    /** @type {WebSocket|null} */
    var socket = null;
    var socketRetry = 0;
    var controller = {
      /** @type {User|null} */
      user: null,
      signIn: signIn,
      requestScopes: requestScopes,
      signOut: function () { return leave("signed_out", "/signout"); },
      disconnect: function () { return leave("disconnected", "/disconnect"); }
    };

    /** @param {string} text @param {string} kind */
    function status(text, kind) { if (on.onStatus) { on.onStatus(text, kind); } }

    /** @param {unknown} value */
    function takeState(value) {
      if (typeof value === "string" && value && !spent[value]) { nextState = value; }
    }

    /** @returns {Promise<string>} the next state, from GET <prefix>/state only when none is at hand */
    function stateForRequest() {
      if (nextState) {
        var state = nextState;
        nextState = null;
        spent[state] = true;
        return Promise.resolve(state);
      }
      return fetchState().then(function (state) { spent[state] = true; return state; });
    }

    /** @returns {Promise<string>} a fresh state from GET <prefix>/state (which starts a session if need be) */
    function fetchState() {
      return fetch(url("/state"), {credentials: "same-origin", cache: "no-store"})
        .then(function (r) { return r.json(); })
        .then(function (doc) {
          if (doc.prompt === "consent") { needsConsent = true; }
          return String(doc.state || "");
        });
    }

    /**
     * POST to the app with a fresh state; retried once with the state of a
     * 403 "invalid state" answer (the code is not spent: the state is checked first).
     * @param {string} path @param {string} body @param {string} [contentType]
     * @returns {Promise<{status: number, doc: any}>}
     */
    function post(path, body, contentType) {
      /** @param {number} tries @returns {Promise<{status: number, doc: any}>} */
      function send(tries) {
        return stateForRequest().then(function (state) {
          /** @type {Object<string, string>} */
          var headers = {"X-Requested-With": "XMLHttpRequest", "X-Signin-State": state};
          if (contentType) { headers["Content-Type"] = contentType; }
          return fetch(url(path), {method: "POST", credentials: "same-origin", headers: headers, body: body});
        }).then(function (response) {
          return response.json().catch(function () { return {}; }).then(function (doc) {
            takeState(doc && doc.state);
            if (response.status === 403 && doc && (doc.error === "invalid state" || doc.error === "no session") &&
                tries > 0) {
              return send(tries - 1);
            }
            return {status: response.status, doc: doc || {}};
          });
        });
      }
      return send(1);
    }

    /** @param {User} user @param {number|null} accessExpiresAt */
    function showSignedIn(user, accessExpiresAt) {
      view = "signed_in";
      needsConsent = false;
      controller.user = user;
      button.hidden = true;
      var text = "You are fully logged in as " + (user.email || user.sub) + ".";
      if (accessExpiresAt) {
        text += " Access you granted for a limited time ends at " + new Date(accessExpiresAt * 1000).toLocaleString() + ".";
      }
      status(text, "signed_in");
      if (on.onSignedIn) { on.onSignedIn(user, {accessExpiresAt: accessExpiresAt || null}); }
    }

    /** @param {string} reason @param {string} text */
    function showSignedOut(reason, text) {
      view = "signed_out";
      controller.user = null;
      button.hidden = false;
      status(text, reason);
      if (on.onSignedOut) { on.onSignedOut(reason); }
    }

    /** @param {string} kind @param {string} text */
    function showNotSignedIn(kind, text) {
      view = "signed_out";
      controller.user = null;
      button.hidden = false;
      status(text, kind);
    }

    /**
     * The end of a sign-in attempt, from the POST's answer or the socket's
     * frame, whichever comes first; `id` names the attempt (0: none of ours).
     * @param {Outcome & {accessExpiresAt?: (number|null)}} outcome @param {number} id
     */
    function settle(outcome, id) {
      if (id) {
        if (!attempt || attempt.id !== id || attempt.done) { return; }
      } else if (attempt && !attempt.done && attempt.posting) {
        id = attempt.id;  // a frame while our code is being posted is that attempt's outcome
      } else if (!news(outcome)) {
        return;
      }
      var ours = attempt && attempt.id === id && !attempt.done ? attempt : null;
      if (ours) { ours.done = true; }
      if (outcome.status === "signed_in" && outcome.user) {
        showSignedIn(outcome.user, outcome.accessExpiresAt || null);
      } else if (outcome.status === "consent_required") {
        needsConsent = true;
        showNotSignedIn("consent_required",
          "Google sent no refresh token for this account. Click " + QUOTED + " again and grant offline access.");
        if (on.onConsentRequired) { on.onConsentRequired(); }
      } else if (outcome.status === "cancelled") {
        if (view !== "signed_in") {
          showNotSignedIn("cancelled", "Sign-in was cancelled" + (outcome.reason ? " (" + outcome.reason + ")" : "") + ".");
        }
      } else {
        var reason = outcome.reason || "error";
        if (view === "signed_in" && !ours) { return; }
        if (view !== "signed_in") { showNotSignedIn("failed", "Sign-in failed: " + reason + "."); }
        else { status("Sign-in failed: " + reason + ".", "failed"); }
        if (on.onFailed) { on.onFailed(reason); }
      }
      if (ours) { ours.resolve(outcome); }
    }

    /**
     * Whether a frame that ends no attempt in flight here (a replay of the
     * session's last outcome when the socket reconnects, another tab of this
     * session) changes what the page shows.
     * @param {Outcome} outcome
     */
    function news(outcome) {
      if (answerLost) { answerLost = false; return true; }  // our last answer never came: this is its outcome
      if (outcome.status === "signed_in" && outcome.user) {
        return !(view === "signed_in" && controller.user && controller.user.sub === outcome.user.sub);
      }
      if (outcome.status === "consent_required") { needsConsent = true; }
      return false;  // an old failure is not news
    }

    /** @param {{code?: string, error?: string}} result @param {number} id */
    function codeReceived(result, id) {
      if (!result.code) {
        settle({status: "cancelled", reason: result.error || ""}, id);
        return;
      }
      if (attempt && attempt.id === id) { attempt.posting = true; }
      status("Signing in\u2026", "signing_in");
      post("/storeauthcode", result.code, "application/octet-stream; charset=utf-8").then(function (answer) {
        var doc = answer.doc;
        if (answer.status === 200 && doc.user) {
          settle({status: "signed_in", user: doc.user, accessExpiresAt: doc.access_expires_at || null}, id);
        } else if (answer.status === 409) {
          settle({status: "consent_required"}, id);
        } else {
          settle({status: "failed", reason: String(doc.error || "error")}, id);
        }
      }, function () {
        settle({status: "failed", reason: "the server could not be reached"}, id);
        answerLost = true;
      });
    }

    /** @param {string} extra @returns {Promise<Outcome>} */
    function begin(extra) {
      if (!requestCode) { return Promise.resolve({status: "failed", reason: "not ready"}); }
      var open = requestCode;
      if (attempt && !attempt.done) {
        // Its code is on the way to the server: that outcome is this click's too.
        if (attempt.posting) { return attempt.promise; }
        // A new click supersedes an attempt whose popup was left open: its late outcome is ignored.
        attempt.done = true;
        attempt.resolve({status: "cancelled", reason: "superseded"});
      }
      var id = ++attemptSeq;
      answerLost = false;
      /** @type {(o: Outcome) => void} */
      var resolveOutcome = function () {};
      var promise = new Promise(function (/** @type {(o: Outcome) => void} */ resolve) { resolveOutcome = resolve; });
      attempt = {id: id, done: false, posting: false, promise: promise, resolve: resolveOutcome};
      // Synchronously, within the click: popup blockers allow window.open only during the user's gesture.
      // The signed-in user's email pre-selects that account in Google's popup.
      open({scope: joinScopes(config.scope, extra), hint: controller.user ? controller.user.email || "" : ""});
      return promise;
    }

    function signIn() { return begin(""); }

    /** @param {string[]} scopes */
    function requestScopes(scopes) { return begin((scopes || []).join(" ")); }

    /** @param {string} reason @param {string} path @returns {Promise<boolean>} */
    function leave(reason, path) {
      var mine = leaving = {kind: reason, frameSeen: false};
      return post(path, "").then(function (answer) {
        if (leaving === mine) { leaving = null; }
        if (answer.status === 200) {
          // The session ended: start the next one now, so the socket reconnects and a sign-in is one POST.
          fetchState().then(takeState, function () { /* the next POST fetches one */ });
          showSignedOut(reason, reason === "disconnected" ? "Disconnected: access revoked and your tokens forgotten."
                                                          : "Signed out.");
          return true;
        }
        if (mine.frameSeen) { showSignedOut("signed_out", "Signed out."); return true; }
        status(reason === "disconnected" ? "Disconnect failed; try again." : "Sign-out failed; try again.", "failed");
        return false;
      }, function () {
        if (leaving === mine) { leaving = null; }
        if (mine.frameSeen) { showSignedOut("signed_out", "Signed out."); return true; }
        status("The server could not be reached; try again.", "failed");
        return false;
      });
    }

    /** @param {any} frame */
    function handleFrame(frame) {
      takeState(frame.state);
      if (frame.type === "signed_in") {
        settle({status: "signed_in", user: frame.user, accessExpiresAt: frame.access_expires_at || null}, 0);
      } else if (frame.type === "consent_required") {
        settle({status: "consent_required"}, 0);
      } else if (frame.type === "failed") {
        settle({status: "failed", reason: String(frame.reason || "error")}, 0);
      } else if (frame.type === "access_expiring") {
        // Time-limited access ends soon: offer to renew it (with consent, so Google issues a new grant).
        needsConsent = true;
        if (view === "signed_in" && controller.user) {
          status("You are fully logged in as " + (controller.user.email || controller.user.sub) + "." +
                 " Access you granted for a limited time ends at " + new Date(frame.expires_at * 1000).toLocaleString() +
                 ": click " + QUOTED + " to renew it.", "access_expiring");
          button.hidden = false;
        }
        if (on.onAccessExpiring) { on.onAccessExpiring(frame.expires_at); }
      } else if (frame.type === "signed_out") {
        // Our own sign-out or disconnect: its answer is more specific, let it speak.
        if (leaving) { leaving.frameSeen = true; return; }
        if (view === "signed_in") { showSignedOut("ended", "Signed out."); }
      }
    }

    function openSocket() {
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      var ws = socket = new WebSocket(scheme + location.host + url("/confirm"));
      ws.onopen = function () { socketRetry = 0; };
      ws.onmessage = function (event) {
        var frame;
        try { frame = JSON.parse(event.data); } catch (e) { return; /* junk is ignored */ }
        if (frame && typeof frame === "object") { handleFrame(frame); }
      };
      ws.onclose = function () {
        if (socket === ws) { socket = null; }
        // Reconnect with backoff: a socket that connects late still learns the outcome.
        socketRetry = Math.min(socketRetry + 1, 6);
        setTimeout(openSocket, 250 * Math.pow(2, socketRetry));
      };
    }

    /** @param {string} reason */
    function libraryFailed(reason) {
      button.disabled = true;
      var legacy = config.library === "gapi"
        ? " The legacy gapi.auth2 library does not work for OAuth clients created after July 2022; use Google Identity Services."
        : "";
      status("Google's sign-in library could not start (" + reason + ")." + legacy, "library_failed");
      if (on.onFailed) { on.onFailed("library_init_failed: " + reason); }
    }

    function initGis() {
      requestCode = function (options) {
        var id = attemptSeq;
        /** @type {google.accounts.oauth2.CodeClientConfig} */
        var clientConfig = {
          client_id: config.clientId,
          scope: options.scope,
          ux_mode: "popup",
          include_granted_scopes: true,
          callback: function (response) { codeReceived({code: response.code, error: response.error}, id); },
          error_callback: function (error) { codeReceived({error: (error && error.type) || "popup_error"}, id); }
        };
        if (options.hint) { clientConfig.login_hint = options.hint; }
        google.accounts.oauth2.initCodeClient(clientConfig).requestCode();
      };
      ready();
    }

    function initGapi() {
      gapi.load("auth2", {
        callback: function () {
          var auth2 = gapi.auth2.init({client_id: config.clientId, scope: config.scope});
          // Wait for init: Google refuses gapi.auth2 for client ids created after July 2022.
          auth2.then(function () {
            requestCode = function (options) {
              var id = attemptSeq;
              /** @type {gapi.auth2.OfflineAccessOptions} */
              var offline = {scope: options.scope};
              if (needsConsent) { offline.prompt = "consent"; }
              auth2.grantOfflineAccess(offline).then(function (response) {
                codeReceived({code: response.code}, id);
              }, function (/** @type {any} */ error) {
                codeReceived({error: (error && error.error) || "popup_closed"}, id);
              });
            };
            ready();
          }, function (reason) {
            libraryFailed((reason && reason.error) || "init failed");
          });
        },
        onerror: function () { libraryFailed("gapi.load failed"); }
      });
    }

    function ready() {
      button.disabled = false;
      if (on.onReady) { on.onReady(); }
    }

    /** @param {any} session */
    function showSession(session) {
      if (session && session.signed_in && session.user) {
        showSignedIn(session.user, null);
      } else if (needsConsent) {
        showNotSignedIn("signed_out", "Click " + QUOTED + " and grant offline access.");
      } else {
        showNotSignedIn("signed_out", "Not signed in.");
      }
    }

    button.disabled = true;
    button.addEventListener("click", function () { signIn(); });

    // What the page did not bring: the session (who is signed in) and the first state.
    var rendered = config.user !== undefined;
    var known = rendered
      ? Promise.resolve({signed_in: !!config.user, user: config.user})
      : fetch(url("/session"), {credentials: "same-origin", cache: "no-store"})
          .then(function (r) { return r.ok ? r.json() : {signed_in: false}; }, function () { return {signed_in: false}; });
    var session = nextState ? Promise.resolve() : fetchState().then(takeState, function () {
      /* the first POST fetches one */
    });

    Promise.all([known, session]).then(function (results) {
      showSession(results[0]);
      openSocket();  // after the state request: it starts the session the socket needs
      var nonce = SCRIPT ? SCRIPT.nonce : undefined;
      var loaded = config.library === "gapi"
        ? (typeof gapi !== "undefined" ? Promise.resolve() : loadScript(config.scriptUrl, nonce))
        : (typeof google !== "undefined" && google.accounts && google.accounts.oauth2
            ? Promise.resolve() : loadScript(config.scriptUrl, nonce));
      loaded.then(config.library === "gapi" ? initGapi : initGis, function () { libraryFailed("script_load_failed"); });
    });

    return controller;
  }

  /** @type {any} */ (window).TornadoSignin = {mount: mount, config: readConfig};
})();
