// Debian's Chromium, headless, as playwright-core drives it here: no browser download, and no background
// networking (the machine's closed network refuses those connections, many at a time).
import { chromium } from 'playwright-core';

const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

export function launchChromium() {
  return chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: FLAGS });
}

// Runs the steps, keeps a failure in result.errors rather than throwing, closes the browser, and prints
// result as the one JSON line the Python test reads.
export async function reportRun(result, steps) {
  const browser = await launchChromium();
  try {
    await steps(browser);
  } catch (e) {
    result.errors.push(String(e));
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
}
