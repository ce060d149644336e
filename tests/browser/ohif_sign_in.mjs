// An annotator signs in to OHIF with the lab's OpenID provider, as in the team deployment: opening the viewer sends
// them to the provider's page, where they type a user name and password; back in
// OHIF (the code flow with PKCE) the study opens with every request to the server carrying their token. Next Sample
// reloads the page: the provider's session signs them in again without its form. The token is renewed before it
// expires and OHIF sends the renewed one. Signing out (/ohif/logout, confirmed on the provider's page) ends the
// session: the viewer asks for the login form again. Prints one JSON line; screenshots into OUT_DIR.
//   node ohif_sign_in.mjs SERVER_URL ISSUER_URL STUDY_UID OUT_DIR USER PASSWORD
import { reportRun } from './chromium.mjs';
import { connectPanel, newMonaiLabelPage, openNextSample } from './monai_label_panel.mjs';

const [server, issuer, study, outDir, user, password] = process.argv.slice(2);
const TIMEOUT_MS = 90000;
const RENEWAL_WAIT_MS = 120000;

const result = {
  errors: [], console: [], withoutToken: [], signedIn: null, callbackUrl: '', requests: 0, requestsWithoutToken: 0,
  urlsWithToken: [], loginFormsShown: 0, nextSample: null, reopenedStudy: null, renewed: false, sentRenewedToken: false,
  signedOutToLoginForm: false,
};
const seenUrls = [];
const tokensSent = [];

async function storedUser(page) {
  return page.evaluate(() => {
    const key = Object.keys(sessionStorage).find((k) => k.startsWith('oidc.user:'));
    return key ? JSON.parse(sessionStorage.getItem(key)) : null;
  });
}

async function waitForStudy(page) {
  await page.waitForFunction(() => window.services?.displaySetService?.getActiveDisplaySets().length > 0, null, { timeout: TIMEOUT_MS });
  const notice = page.getByText('Confirm and Hide');
  if (await notice.count()) await notice.click();
}

async function typeLogin(page, name, secret) {
  await page.locator('input[name="login"]').waitFor({ timeout: TIMEOUT_MS });
  await page.locator('input[name="login"]').fill(name);
  await page.locator('input[name="password"]').fill(secret);
  await page.getByRole('button', { name: 'Sign-in' }).click();
}

await reportRun(result, async (browser) => {
  const page = await newMonaiLabelPage(browser, server, result);
  try {
    await steps(page);
  } finally { // where it stopped, for a failure's message
    result.lastUrl = page.url().replace(/(code|state|session_state)=[^&]+/g, '$1=…');
    result.lastText = (await page.evaluate(() => document.body?.innerText || '').catch(() => '')).slice(0, 300);
  }
});

async function steps(page) {
  page.on('dialog', (d) => d.accept()); // Next Sample's "This action will reload current page" confirmation
  page.on('request', (r) => {
    seenUrls.push(r.url());
    if (!r.url().startsWith(server) || r.url().includes('/ohif/')) return;
    result.requests += 1;
    const auth = r.headers().authorization;
    if (auth) tokensSent.push(auth.replace('Bearer ', ''));
    else {
      result.requestsWithoutToken += 1;
      result.withoutToken.push(r.url().slice(0, 160));
    }
  });
  page.on('response', async (r) => { if (r.status() >= 400) result.console.push(`${r.status()} ${r.url().slice(0, 120)} ${(await r.text().catch(() => '')).slice(0, 300)}`); });
  page.on('framenavigated', (f) => { if (f === page.mainFrame() && f.url().startsWith(`${issuer}/interaction/`)) result.loginFormsShown += 1; });

  await page.goto(`${server}/ohif/monai-label?StudyInstanceUIDs=${study}`, { timeout: TIMEOUT_MS });
  await page.waitForURL((url) => url.href.startsWith(issuer), { timeout: TIMEOUT_MS });
  await page.screenshot({ path: `${outDir}/ohif_sign_in_provider.png` });
  await typeLogin(page, user, password);
  await page.waitForURL((url) => url.pathname === '/ohif/callback', { timeout: TIMEOUT_MS });
  result.callbackUrl = page.url().replace(/code=[^&]+/, 'code=…');
  await page.waitForURL((url) => url.searchParams.get('StudyInstanceUIDs') === study, { timeout: TIMEOUT_MS });
  await waitForStudy(page);
  const first = await storedUser(page);
  result.signedIn = first && { user: first.profile?.preferred_username || first.profile?.sub, refreshToken: Boolean(first.refresh_token), expiresIn: first.expires_at - Date.now() / 1000 };
  const formsBeforeReload = result.loginFormsShown;
  await connectPanel(page, server);
  await page.screenshot({ path: `${outDir}/ohif_signed_in.png` });

  // Next Sample reloads the page: signed in again through the provider's session, no form
  result.nextSample = await openNextSample(page, server, TIMEOUT_MS);
  await waitForStudy(page);
  result.reopenedStudy = new URL(page.url()).searchParams.get('StudyInstanceUIDs');
  result.loginFormsAfterReload = result.loginFormsShown - formsBeforeReload;

  // the token is renewed before it expires, and OHIF sends the renewed one
  const before = (await storedUser(page)).access_token;
  await page.waitForFunction((old) => {
    const key = Object.keys(sessionStorage).find((k) => k.startsWith('oidc.user:'));
    return key && JSON.parse(sessionStorage.getItem(key)).access_token !== old;
  }, before, { timeout: RENEWAL_WAIT_MS, polling: 1000 });
  const renewed = (await storedUser(page)).access_token;
  result.renewed = renewed !== before;
  await page.waitForTimeout(4000); // OHIF takes the renewed user within a few seconds (ohif_sign_in.js)
  await connectPanel(page, server);
  result.sentRenewedToken = tokensSent.includes(renewed);

  for (const token of new Set([first.access_token, before, renewed, first.refresh_token])) {
    if (token) result.urlsWithToken.push(...seenUrls.filter((u) => u.includes(token)));
  }

  // sign out: the provider asks to confirm; then the viewer needs the login form again
  // OHIF's own sign-out route, as its multi-tab sign-out calls it: back to the viewer's start page afterwards
  await page.goto(`${server}/ohif/logout?redirect_uri=${encodeURIComponent(`${server}/ohif/`)}`, { timeout: TIMEOUT_MS });
  await page.getByRole('button', { name: 'Yes, sign me out' }).click({ timeout: TIMEOUT_MS });
  // back on the viewer with no session: it sends the browser to the provider, which shows its form again
  await page.locator('input[name="login"]').waitFor({ timeout: TIMEOUT_MS });
  result.signedOutToLoginForm = page.url().startsWith(`${issuer}/interaction/`);
}
