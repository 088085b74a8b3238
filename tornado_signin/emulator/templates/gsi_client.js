{% autoescape None %}/* Google Identity Services code client, as served by the tornado-signin emulator.
 *
 * Offers google.accounts.oauth2.initCodeClient(config).requestCode() with
 * Google's popup semantics: the popup answers through postMessage, and only
 * messages from the emulator's origin and from that very popup count.
 *
 * Exactly Google's surface (@types/google.accounts, CodeClientConfig):
 * options that are not CodeClientConfig fields (prompt, nonce, ...) are
 * ignored as Google ignores them, requestCode() takes no arguments, and the
 * callback's response has only CodeResponse's fields.
 */
(function () {
  "use strict";
  var EMULATOR_ORIGIN = {{ origin_json }};
  var AUTH_URL = EMULATOR_ORIGIN + "/o/oauth2/v2/auth";
  // CodeClientConfig fields that become parameters of the authorization request.
  var PASSED_PARAMS = ["scope", "state", "login_hint", "hd", "include_granted_scopes"];

  var google = window.google = window.google || {};
  google.accounts = google.accounts || {};
  google.accounts.oauth2 = google.accounts.oauth2 || {};

  function authUrl(config) {
    var params = new URLSearchParams();
    params.set("client_id", config.client_id);
    params.set("redirect_uri", "postmessage");
    params.set("response_type", "code");
    params.set("access_type", "offline");
    params.set("origin", window.location.origin);
    PASSED_PARAMS.forEach(function (name) {
      var value = config[name];
      if (value === undefined || value === null || value === "") { return; }
      params.set(name, typeof value === "boolean" ? String(value) : value);
    });
    // Google's aliases: hint for login_hint, hosted_domain for hd.
    if (!params.has("login_hint") && config.hint) { params.set("login_hint", config.hint); }
    if (!params.has("hd") && config.hosted_domain) { params.set("hd", config.hosted_domain); }
    if (config.select_account) { params.set("prompt", "select_account"); }
    return AUTH_URL + "?" + params.toString();
  }

  function CodeClient(config) {
    if (!config || !config.client_id) { throw new Error("initCodeClient: client_id is required"); }
    if (config.ux_mode && config.ux_mode !== "popup") {
      throw new Error("the emulator's initCodeClient supports ux_mode 'popup' only");
    }
    this._config = config;
    this._cleanup = null;
  }

  // Google's requestCode takes no arguments: anything passed is ignored.
  CodeClient.prototype.requestCode = function () {
    var config = this._config;
    var self = this;
    if (self._cleanup) { self._cleanup(); }
    var popup = window.open(authUrl(config), "g_auth_code_window", "width=500,height=640,popup=yes");
    if (!popup) {
      if (typeof config.error_callback === "function") { config.error_callback({type: "popup_failed_to_open", message: "Failed to open popup window"}); }
      return;
    }
    var answered = false;
    var timer = null;

    function cleanup() {
      window.removeEventListener("message", onMessage);
      if (timer !== null) { clearInterval(timer); timer = null; }
      self._cleanup = null;
    }

    function onMessage(event) {
      if (event.origin !== EMULATOR_ORIGIN || event.source !== popup) { return; }
      var data = event.data;
      if (!data || typeof data !== "object") { return; }
      answered = true;
      cleanup();
      var response;
      // Only CodeResponse's fields.
      if (data.error) {
        response = {error: data.error, error_description: data.error_description, error_uri: data.error_uri, state: data.state};
      } else {
        response = {code: data.code, scope: data.scope, state: data.state};
      }
      if (typeof config.callback === "function") { config.callback(response); }
    }

    window.addEventListener("message", onMessage);
    timer = setInterval(function () {
      if (!popup.closed) { return; }
      clearInterval(timer);
      timer = null;
      // The popup posts its answer and closes at once: give a message that
      // is already queued the chance to arrive before declaring it closed.
      setTimeout(function () {
        if (answered) { return; }
        cleanup();
        if (typeof config.error_callback === "function") {
          config.error_callback({type: "popup_closed", message: "Popup window closed"});
        }
      }, 300);
    }, 200);
    self._cleanup = cleanup;
  };

  google.accounts.oauth2.initCodeClient = function (config) {
    return new CodeClient(config);
  };
})();
