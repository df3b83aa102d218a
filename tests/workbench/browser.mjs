// Opens a URL in headless Chromium (CHROMIUM, or Debian's), collects the page's script errors,
// runs `body(page, errors)` and closes the browser whatever happens.
import { chromium } from "playwright-core";

export async function withPage(url, body) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu"],
  });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(url);
    return await body(page, errors);
  } finally {
    await browser.close();
  }
}
