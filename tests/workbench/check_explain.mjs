// Drives the tuning workbench in headless Chromium: sets one category's threshold to 0 (every
// example labelled as no violation is then a false positive), asks "why?" for the first one,
// and prints the explanation the server sent and the marks the page drew, as JSON.
// Usage: node check_explain.mjs URL CATEGORY
import { withPage } from "./browser.mjs";

const [url, category] = process.argv.slice(2);
await withPage(url, async (page, errors) => {
  await page.fill(`#value-${category}`, "0");
  await page.press(`#value-${category}`, "Tab");
  const item = page.locator(`#fp-${category} li`).first();
  const listed = await item.textContent();
  const [answer] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/explain")),
    item.locator("button.explain").click(),
  ]);
  const sent = await answer.json();
  await item.locator(".why").waitFor();
  const marks = await item.locator(".why mark").evaluateAll((ms) =>
    ms.map((m) => ({
      text: m.textContent,
      effect: Number(m.dataset.effect),
      strength: Number(m.style.getPropertyValue("--strength")),
    })),
  );
  const shown = await item.locator(".why").evaluate((d) => d.innerText);
  const context = await page.locator("#context").evaluate((d) => (d.hidden ? null : d.innerText));
  console.log(JSON.stringify({ listed, sent, marks, shown, context, errors }));
});
