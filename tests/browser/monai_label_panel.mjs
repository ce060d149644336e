// What every OHIF test here does first: a page of the MONAI Label mode whose errors, crashes and console errors
// land in result, and the panel connected to the server.
export const PANEL_TIMEOUT_MS = 90000;

// A page whose MONAI Label panel reads `server` (from the cookie it looks at); page errors, crashes and console
// errors (and the server's own 'BraTS' lines) go into result.errors and result.console.
export async function newMonaiLabelPage(browser, server, result) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  await context.addCookies([{ name: 'MONAILABEL_SERVER_URL', value: `${server}/`, url: server }]);
  const page = await context.newPage();
  page.on('pageerror', (e) => result.errors.push(e.message));
  page.on('crash', () => result.errors.push('the page crashed'));
  page.on('console', (m) => { if (m.type() === 'error' || m.text().startsWith('BraTS')) result.console.push(m.text().slice(0, 500)); });
  return page;
}

// The panel's refresh button: it reads the server's /info/ and lists what the server offers.
export async function connectPanel(page, server, timeout = PANEL_TIMEOUT_MS) {
  const [answer] = await Promise.all([
    page.waitForResponse((r) => r.url().startsWith(`${server}/info/`), { timeout }),
    page.locator('#monailabelServerURL').locator('xpath=following::button[1]').click(),
  ]);
  await page.getByText('Auto-Segmentation').waitFor({ timeout });
  return { ok: answer.ok(), info: await answer.json() };
}

// Active Learning > Next Sample: the server picks a study and the panel's dialog names it; its OK reloads the page on
// that study. Returns the server's answer once the page is on the study (the page accepts the reload's confirmation).
export async function openNextSample(page, server, timeout = PANEL_TIMEOUT_MS) {
  const [picked] = await Promise.all([
    page.waitForResponse((r) => r.url().startsWith(`${server}/activelearning/`), { timeout }),
    page.getByRole('button', { name: 'Next Sample' }).click(),
  ]);
  const answer = await picked.json();
  await page.getByRole('button', { name: 'OK' }).click();
  await page.waitForURL((url) => url.searchParams.get('StudyInstanceUIDs') === answer.StudyInstanceUID, { timeout });
  return answer;
}
