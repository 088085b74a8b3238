{% autoescape None %}/* The legacy gapi.auth2 client, as served by the tornado-signin emulator.
 *
 * Offers gapi.load("auth2", cb) and gapi.auth2.init({...}).grantOfflineAccess()
 * with Google's popup semantics, and calls window[onload]() when the script
 * URL carries ?onload=fnName, as Google's platform.js does.
 *
 * Exactly gapi's surface (@types/gapi.auth2): init honours ClientConfig's
 * client_id, scope, fetch_basic_profile and hosted_domain;
 * grantOfflineAccess honours OfflineAccessOptions' scope and prompt (its
 * scope, when given, is what is asked for) and resolves {code}. With the
 * emulator's gapi_init_error switch (/emulator/settings), init fails as
 * Google's does for client ids created after July 2022:
 * then(ok, fail) calls fail({error, details}).
 *
 * The JSDoc types are gapi's: tests/test_signin_js.py type-checks this file with TypeScript.
 */
// @ts-check
(function () {
  "use strict";
  var EMULATOR_ORIGIN = {{ origin_json }};
  var ONLOAD = {{ onload_json }};
  var INIT_ERROR = {{ init_error_json }};
  var AUTH_URL = EMULATOR_ORIGIN + "/o/oauth2/v2/auth";
  var BASIC_SCOPES = ["openid", "email", "profile"];

  /** @param {string} base @param {string|undefined} extra @returns {string} */
  function scopeString(base, extra) {
    /** @type {Object<string, boolean>} */
    var seen = {};
    /** @type {string[]} */
    var out = [];
    (base + " " + (extra || "")).split(/\s+/).forEach(function (scope) {
      if (scope && !seen[scope]) { seen[scope] = true; out.push(scope); }
    });
    return out.join(" ");
  }

  /** @param {Object<string, string|undefined>} params @returns {Promise<{code: string}>} */
  function openPopup(params) {
    return new Promise(function (resolve, reject) {
      var query = new URLSearchParams();
      Object.keys(params).forEach(function (name) {
        var value = params[name];
        if (value !== undefined && value !== null && value !== "") { query.set(name, value); }
      });
      var popup = window.open(AUTH_URL + "?" + query.toString(), "g_auth2_window", "width=500,height=640,popup=yes");
      if (!popup) { reject({error: "popup_blocked_by_browser"}); return; }
      var opened = popup;
      var answered = false;
      /** @type {number|null} */
      var timer = null;
      function cleanup() {
        window.removeEventListener("message", onMessage);
        if (timer !== null) { clearInterval(timer); timer = null; }
      }
      /** @param {MessageEvent} event */
      function onMessage(event) {
        if (event.origin !== EMULATOR_ORIGIN || event.source !== opened) { return; }
        var data = event.data;
        if (!data || typeof data !== "object") { return; }
        answered = true;
        cleanup();
        if (data.error) { reject({error: data.error}); } else { resolve({code: data.code}); }
      }
      window.addEventListener("message", onMessage);
      timer = window.setInterval(function () {
        if (!opened.closed) { return; }
        if (timer !== null) { clearInterval(timer); }
        timer = null;
        setTimeout(function () {
          if (answered) { return; }
          cleanup();
          reject({error: "popup_closed_by_user"});
        }, 300);
      }, 200);
    });
  }

  /**
   * @constructor
   * @param {gapi.auth2.ClientConfig} params
   */
  function GoogleAuth(params) {
    var config = params || {};
    this._params = config;
    if (!config.client_id) { throw new Error("gapi.auth2.init: client_id is required"); }
    var fetchBasic = config.fetch_basic_profile !== false;
    this._scope = scopeString(fetchBasic ? BASIC_SCOPES.join(" ") : "", config.scope);
  }

  /** @type {gapi.auth2.GoogleAuth["then"]} */
  GoogleAuth.prototype.then = function (onInit, onError) {
    var self = /** @type {any} */ (this);
    if (INIT_ERROR) {
      return Promise.resolve().then(function () {
        var reason = {error: INIT_ERROR, details: "Not a valid origin for the client: this client id cannot use gapi.auth2 " +
                      "(the emulator's gapi_init_error switch)."};
        if (typeof onError === "function") { return onError(reason); }
        throw reason;
      });
    }
    // Resolve with undefined, never with the (thenable) GoogleAuth itself,
    // which would make the promise machinery call then() forever.
    return Promise.resolve().then(function () {
      if (typeof onInit === "function") { onInit(self); }
    }, onError);
  };

  /** @param {gapi.auth2.OfflineAccessOptions} [options] @returns {Promise<{code: string}>} */
  GoogleAuth.prototype.grantOfflineAccess = function (options) {
    options = options || {};
    var params = /** @type {gapi.auth2.ClientConfig} */ (this._params);
    if (INIT_ERROR) { return Promise.reject({error: INIT_ERROR}); }
    return openPopup({
      client_id: params.client_id,
      redirect_uri: "postmessage",
      response_type: "code",
      access_type: "offline",
      // The scopes asked for: the options' when given (a page asks for base + extra), else init's.
      scope: options.scope ? scopeString("", options.scope) : this._scope,
      prompt: options.prompt === "consent" ? "consent" : "select_account",
      hd: params.hosted_domain,
      include_granted_scopes: "true",
      origin: window.location.origin
    });
  };

  GoogleAuth.prototype.signOut = function () { return Promise.resolve(); };
  GoogleAuth.prototype.disconnect = function () { return Promise.resolve(); };

  /** @type {any} */
  var instance = null;
  var root = /** @type {any} */ (window);
  var api = root.gapi = root.gapi || {};
  api.auth2 = {
    /** @param {gapi.auth2.ClientConfig} params */
    init: function (params) {
      instance = new GoogleAuth(params);
      return instance;
    },
    getAuthInstance: function () { return instance; }
  };
  /** @type {typeof gapi.load} */
  var load = function (libraries, callback) {
    var config = typeof callback === "function" ? null : callback;
    var done = config ? config.callback : callback;
    if (String(libraries).split(/[:,]/).indexOf("auth2") < 0 && config && typeof config.onerror === "function") {
      setTimeout(config.onerror, 0);
      return;
    }
    if (typeof done === "function") { setTimeout(done, 0); }
  };
  api.load = load;

  // The page may define its onload function after this script tag (or load
  // it async): look it up only once the document has been parsed.
  function runOnload() {
    if (typeof root[ONLOAD] === "function") { root[ONLOAD](); }
  }
  if (ONLOAD) {
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", runOnload);
    } else {
      setTimeout(runOnload, 0);
    }
  }
})();
