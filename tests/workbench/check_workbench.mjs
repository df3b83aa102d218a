// Drives the tuning workbench in headless Chromium: reads one category's numbers, moves its
// slider with the mouse, reads them again, exports the TOML, and prints what it saw as JSON.
// Usage: node check_workbench.mjs URL CATEGORY
import { withPage } from "./browser.mjs";

const [url, category] = process.argv.slice(2);
await withPage(url, async (page, errors) => {
  const read = async () => {
    const out = {};
    for (const k of ["value", "precision", "recall", "f1", "fpr", "traffic", "counts"]) {
      const el = page.locator(`#${k}-${category}`);
      out[k] = k === "value" ? await el.inputValue() : await el.textContent();
    }
    return out;
  };
  const before = await read();
  const slider = page.locator(`#slider-${category}`);
  await slider.scrollIntoViewIfNeeded();
  const box = await slider.boundingBox();
  await page.mouse.click(box.x + box.width * 0.8, box.y + box.height / 2);
  const after = await read();
  await page.click("#export");
  await page.waitForFunction(() => document.getElementById("toml").textContent.length > 0);
  const toml = await page.locator("#toml").textContent();
  console.log(JSON.stringify({ before, after, toml, errors }));
});
