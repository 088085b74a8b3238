// Drives the tornado-signin emulator with Node's google-auth-library, unmodified,
// pointed at it only through OAuth2Client's documented `endpoints` option.
// Input: the environment (EMULATOR_URL, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, EMAIL).
// Output: one JSON object on stdout, one entry per check (no token values).
'use strict';
const {OAuth2Client} = require('google-auth-library');

const base = process.env.EMULATOR_URL;
const results = {};

function client() {
  return new OAuth2Client({
    clientId: process.env.CLIENT_ID,
    clientSecret: process.env.CLIENT_SECRET,
    redirectUri: process.env.REDIRECT_URI,
    endpoints: {
      oauth2AuthBaseUrl: `${base}/o/oauth2/v2/auth`,
      oauth2TokenUrl: `${base}/token`,
      oauth2RevokeUrl: `${base}/revoke`,
      tokenInfoUrl: `${base}/tokeninfo`,
      oauth2FederatedSignonPemCertsUrl: `${base}/oauth2/v1/certs`,
      oauth2FederatedSignonJwkCertsUrl: `${base}/oauth2/v3/certs`,
    },
  });
}

// The user's part: open the URL generateAuthUrl made, pick the account, press Allow.
async function consent(authUrl) {
  const page = await (await fetch(authUrl)).text();
  const token = /name="consent" value="([^"]+)"/.exec(page);
  if (!token) throw new Error('no consent form: ' + page.slice(0, 200));
  const answer = await fetch(`${base}/o/oauth2/v2/auth`, {
    method: 'POST',
    redirect: 'manual',
    body: new URLSearchParams({consent: token[1], action: 'approve', email: process.env.EMAIL}),
  });
  return new URL(answer.headers.get('location')).searchParams.get('code');
}

function failure(error) {
  const data = error.response && error.response.data;
  return {error: data || String(error.message || error), status: error.response && error.response.status};
}

async function check(name, fn) {
  try {
    results[name] = {ok: true, ...(await fn())};
  } catch (error) {
    results[name] = {ok: false, ...failure(error)};
  }
}

(async () => {
  const oauth = client();
  let tokens;
  await check('getToken', async () => {
    const url = oauth.generateAuthUrl({access_type: 'offline', prompt: 'consent', scope: ['openid', 'email', 'profile']});
    tokens = (await oauth.getToken(await consent(url))).tokens;
    return {fields: Object.keys(tokens).sort(), expiry_date: typeof tokens.expiry_date, scope: tokens.scope};
  });
  await check('verifyIdToken', async () => {
    const ticket = await oauth.verifyIdToken({idToken: tokens.id_token, audience: process.env.CLIENT_ID});
    const payload = ticket.getPayload();
    return {sub: payload.sub, email: payload.email, email_verified: payload.email_verified, picture: payload.picture};
  });
  await check('verifyIdToken_wrong_audience', async () => {
    await oauth.verifyIdToken({idToken: tokens.id_token, audience: 'someone-else.apps.googleusercontent.com'});
    return {};
  });
  await check('getTokenInfo', async () => {
    const info = await oauth.getTokenInfo(tokens.access_token);
    return {sub: info.sub, aud: info.aud, scopes: info.scopes, email: info.email, expiry_ok: info.expiry_date > Date.now()};
  });
  await check('refresh', async () => {
    const fresh = client();
    fresh.setCredentials({refresh_token: tokens.refresh_token});
    const {token} = await fresh.getAccessToken();
    return {new_token: typeof token === 'string' && token !== tokens.access_token};
  });
  await check('pkce', async () => {
    const {codeVerifier, codeChallenge} = await oauth.generateCodeVerifierAsync();
    const url = oauth.generateAuthUrl({scope: ['openid', 'email'], code_challenge: codeChallenge,
                                       code_challenge_method: 'S256'});
    const code = await consent(url);
    const wrong = await oauth.getToken({code, codeVerifier: codeVerifier.slice(1) + 'A'}).then(
        () => null, failure);
    const missing = await oauth.getToken({code}).then(() => null, failure);
    const right = (await oauth.getToken({code, codeVerifier})).tokens;
    return {wrong, missing, right: Object.keys(right).includes('access_token')};
  });
  await check('revokeToken', async () => {
    const res = await oauth.revokeToken(tokens.access_token);
    const after = await oauth.getTokenInfo(tokens.access_token).then(() => null, failure);
    return {status: res.status, after};
  });
  process.stdout.write(JSON.stringify(results));
})().catch(error => {
  process.stdout.write(JSON.stringify({fatal: String(error && error.stack || error)}));
  process.exitCode = 1;
});
