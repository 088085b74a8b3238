{% autoescape None %}/* Google Identity Services code client, as served by the tornado-signin emulator.
 *
 * Offers google.accounts.oauth2.initCodeClient(config).requestCode() with
 * Google's popup semantics: the popup answers through postMessage, and only
 * messages from the emulator's origin and from that very popup count.
 *
 * Exactly Google's surface (@types/google.accounts, CodeClientConfig):
 * options that are not CodeClientConfig fields (prompt, nonce, ...) are
 * ignored as Google ignores them, requestCode() takes no arguments, and the
 * callback's response has only CodeResponse's fields. The JSDoc types are
 * Google's: tests/test_signin_js.py type-checks this file with TypeScript.
 */
// @ts-check
(function () {
  "use strict";
  var EMULATOR_ORIGIN = {{ origin_json }};
  var AUTH_URL = EMULATOR_ORIGIN + "/o/oauth2/v2/auth";
  // CodeClientConfig fields that become parameters of the authorization request.
  var PASSED_PARAMS = ["scope", "state", "login_hint", "hd", "include_granted_scopes"];

  var root = /** @type {any} */ (window);
  root.google = root.google || {};
  root.google.accounts = root.google.accounts || {};
  root.google.accounts.oauth2 = root.google.accounts.oauth2 || {};

  /** @param {google.accounts.oauth2.CodeClientConfig} config @returns {string} */
  function authUrl(config) {
    var params = new URLSearchParams();
    params.set("client_id", config.client_id);
    params.set("redirect_uri", "postmessage");
    params.set("response_type", "code");
    params.set("access_type", "offline");
    params.set("origin", window.location.origin);
    PASSED_PARAMS.forEach(function (name) {
      var value = /** @type {Object<string, unknown>} */ (/** @type {unknown} */ (config))[name];
      if (value === undefined || value === null || value === "") { return; }
      params.set(name, String(value));
    });
    // Google's aliases: hint for login_hint, hosted_domain for hd.
    if (!params.has("login_hint") && config.hint) { params.set("login_hint", config.hint); }
    if (!params.has("hd") && config.hosted_domain) { params.set("hd", config.hosted_domain); }
    if (config.select_account) { params.set("prompt", "select_account"); }
    return AUTH_URL + "?" + params.toString();
  }

  /**
   * @constructor
   * @param {google.accounts.oauth2.CodeClientConfig} config
   */
  function CodeClient(config) {
    if (!config || !config.client_id) { throw new Error("initCodeClient: client_id is required"); }
    if (config.ux_mode && config.ux_mode !== "popup") {
      throw new Error("the emulator's initCodeClient supports ux_mode 'popup' only");
    }
    this._config = config;
    /** @type {(() => void)|null} */
    this._cleanup = null;
  }

  /** @param {google.accounts.oauth2.CodeClientConfig} config @param {"popup_closed"|"popup_failed_to_open"} type
   *  @param {string} message */
  function failed(config, type, message) {
    /** @type {Pick<google.accounts.oauth2.ClientConfigError, "type"|"message">} */
    var error = {type: type, message: message};
    if (typeof config.error_callback === "function") {
      config.error_callback(/** @type {google.accounts.oauth2.ClientConfigError} */ (error));
    }
  }

  // Google's requestCode takes no arguments: anything passed is ignored.
  CodeClient.prototype.requestCode = function () {
    var config = /** @type {google.accounts.oauth2.CodeClientConfig} */ (this._config);
    var self = this;
    if (self._cleanup) { self._cleanup(); }
    var popup = window.open(authUrl(config), "g_auth_code_window", "width=500,height=640,popup=yes");
    if (!popup) {
      failed(config, "popup_failed_to_open", "Failed to open popup window");
      return;
    }
    var opened = popup;
    var answered = false;
    /** @type {number|null} */
    var timer = null;

    function cleanup() {
      window.removeEventListener("message", onMessage);
      if (timer !== null) { clearInterval(timer); timer = null; }
      self._cleanup = null;
    }

    /** @param {MessageEvent} event */
    function onMessage(event) {
      if (event.origin !== EMULATOR_ORIGIN || event.source !== opened) { return; }
      var data = event.data;
      if (!data || typeof data !== "object") { return; }
      answered = true;
      cleanup();
      /** @type {Partial<google.accounts.oauth2.CodeResponse>} only CodeResponse's fields */
      var response;
      if (data.error) {
        response = {error: data.error, error_description: data.error_description, error_uri: data.error_uri, state: data.state};
      } else {
        response = {code: data.code, scope: data.scope, state: data.state};
      }
      if (typeof config.callback === "function") {
        config.callback(/** @type {google.accounts.oauth2.CodeResponse} */ (response));
      }
    }

    window.addEventListener("message", onMessage);
    timer = window.setInterval(function () {
      if (!opened.closed) { return; }
      if (timer !== null) { clearInterval(timer); }
      timer = null;
      // The popup posts its answer and closes at once: give a message that
      // is already queued the chance to arrive before declaring it closed.
      setTimeout(function () {
        if (answered) { return; }
        cleanup();
        failed(config, "popup_closed", "Popup window closed");
      }, 300);
    }, 200);
    self._cleanup = cleanup;
  };

  /** @type {typeof google.accounts.oauth2.initCodeClient} */
  var initCodeClient = function (config) {
    return new CodeClient(config);
  };
  root.google.accounts.oauth2.initCodeClient = initCodeClient;
})();
