// Open onnx-explain's HTML reports in a real headless Chromium and check them (issue 23).
//
//   node benchmarks/check_html.mjs MANIFEST.json [RESULTS.json]
//
// MANIFEST.json (written by benchmarks/check_html.py) is a list of
//   {"name", "kind": "diff" | "audit" | "audit_text" | "explain_text", "html", "screenshot", "expect": {...}}
// The browser packages (@sparticuz/chromium, puppeteer-core) are read from the node_modules under
// $ONNX_EXPLAIN_BROWSER_DIR (default /work/browser). Per report: console errors and page errors, requests
// (a report must be self-contained: only data: URLs and the page itself), every <img> decoded and not blank,
// every reference (src, href, srcset, CSS url(), iframes) resolving inside the file, the expected sections,
// interactive elements (details, buttons, tabs, sortable headers, in-page links) working when clicked, no
// horizontal overflow at 1280 px, no overlapping blocks, no NaN/undefined in the visible text, and a
// full-page screenshot. Prints PASS/FAIL/WARN/INFO lines (WARN: worth a look, not a failure); exit 1 when
// any check fails, 2 on a setup error.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const WIDTH = 1280;
const browserDir = process.env.ONNX_EXPLAIN_BROWSER_DIR || '/work/browser';
const INSTALL = `install the browser: mkdir -p ${browserDir} && cd ${browserDir} && npm install @sparticuz/chromium puppeteer-core (or set ONNX_EXPLAIN_BROWSER_DIR to a folder holding them)`;

const [manifestPath, resultsPath] = process.argv.slice(2);
if (!manifestPath) {
  console.error('usage: node check_html.mjs MANIFEST.json [RESULTS.json]');
  process.exit(2);
}
let chromium, puppeteer;
try {
  const require = createRequire(path.join(path.resolve(browserDir), 'package.json'));
  chromium = require('@sparticuz/chromium');
  chromium = chromium.default || chromium;
  puppeteer = require('puppeteer-core');
  puppeteer = puppeteer.default || puppeteer;
} catch (err) {
  console.error(`no headless browser under ${browserDir} (${String(err.message).split('\n')[0]}); ${INSTALL}`);
  process.exit(2);
}

// ------------------------------------------------------------------------------------------------

async function checkReport(rep) {
  const checks = [];
  const add = (status, name, detail = '') => {
    checks.push({ status, name, detail });
    console.log(`  ${status.padEnd(4)} ${name}${detail ? ': ' + detail : ''}`);
  };
  const ok = (cond, name, good, bad) => add(cond ? 'PASS' : 'FAIL', name, cond ? good : bad);
  console.log(`\n== ${rep.name} (${rep.kind}) ${rep.html}`);

  const page = await browser.newPage();
  await page.setViewport({ width: WIDTH, height: 900 });
  const pageUrl = pathToFileURL(path.resolve(rep.html)).href;
  const consoleMsgs = [], pageErrors = [], failed = [], requests = [];
  page.on('console', (m) => consoleMsgs.push({ type: m.type(), text: m.text() }));
  page.on('pageerror', (e) => pageErrors.push(String(e.message || e)));
  page.on('requestfailed', (q) => failed.push(`${shortUrl(q.url())} (${q.failure()?.errorText})`));
  page.on('request', (q) => requests.push(q.url()));
  const t0 = Date.now();
  const resp = await page.goto(pageUrl, { waitUntil: 'load', timeout: 60000 });
  await page.evaluate(() => document.fonts && document.fonts.ready);
  add('INFO', 'loaded', `${Date.now() - t0} ms, ${(fs.statSync(rep.html).size / 1024).toFixed(0)} KiB, status ${resp ? resp.status() : 'n/a'}`);

  // ---- self-contained: requests, references ------------------------------------------------
  const external = requests.filter((u) => !u.startsWith('data:') && u !== pageUrl && !u.startsWith('about:'));
  ok(external.length === 0, 'no request leaves the file', `${requests.length} request(s): the page and data: URLs only`,
    external.map(shortUrl).join(', '));
  ok(failed.length === 0, 'no failed request', 'none', failed.join(', '));
  const refs = await collectRefs(page);
  const badRefs = refs.filter((x) => !isInline(x.url));
  ok(badRefs.length === 0, 'every reference is inline (data:, #fragment)',
    `${refs.length} reference(s)`, badRefs.map((x) => `${x.where} -> ${shortUrl(x.url)}`).join('; '));
  const links = await page.$$eval('a[href]', (as) => as.map((a) => a.getAttribute('href')).filter((h) => !h.startsWith('#')));
  if (links.length) add('INFO', 'hyperlinks (not loaded)', links.join(', '));

  // ---- console and script errors -----------------------------------------------------------
  const consoleErrors = consoleMsgs.filter((m) => m.type === 'error');
  ok(consoleErrors.length === 0, 'no console error', 'none', consoleErrors.map((m) => m.text).join(' | '));
  const warnings = consoleMsgs.filter((m) => m.type === 'warn' || m.type === 'warning');
  if (warnings.length) add('INFO', 'console warnings', warnings.map((m) => m.text).join(' | '));
  ok(pageErrors.length === 0, 'no page error', 'none', pageErrors.join(' | '));
  const doc = await page.evaluate(() => ({
    mode: document.compatMode, charset: document.characterSet, title: document.title,
    scripts: document.scripts.length,
  }));
  ok(doc.mode === 'CSS1Compat' && doc.charset === 'UTF-8' && doc.title.trim() !== '', 'standards mode, UTF-8, a title',
    `"${doc.title}"`, JSON.stringify(doc));

  // ---- images: decoded, sized, not blank (every frame: srcdoc iframes too) ----------------------
  const imgs = [];
  for (const f of page.frames()) imgs.push(...(await f.evaluate(imageStats).catch((e) => [{ error: String(e) }])));
  const broken = imgs.filter((i) => i.error || !i.complete || !(i.naturalWidth > 0));
  ok(broken.length === 0, 'every <img> loaded (naturalWidth > 0)', `${imgs.length} image(s)`,
    broken.map((i) => i.error || `${i.alt || i.src}: complete=${i.complete} naturalWidth=${i.naturalWidth}`).join('; '));
  const blank = imgs.filter((i) => !i.error && i.naturalWidth > 0 && !(i.std > 2 && i.colors > 4));
  ok(blank.length === 0, 'no blank image', imgs.map((i) => `${i.naturalWidth}x${i.naturalHeight}→${i.width}x${i.height}`).join(' '),
    blank.map((i) => `${i.caption || i.index}: std ${i.std?.toFixed(2)}, ${i.colors} colours`).join('; '));
  const squeezed = imgs.filter((i) => i.width > 0 && i.width < Math.min(i.naturalWidth, 200) * 0.5);
  if (squeezed.length) add('INFO', 'images drawn at under half their size', squeezed.map((i) => `${i.caption}: ${i.naturalWidth}→${i.width}px`).join('; '));

  // ---- text: no NaN/undefined, numbers readable ---------------------------------------------
  const text = await page.evaluate(() => document.body.innerText);
  const junk = text.match(/\b(NaN|undefined|None|null|Infinity|\[object Object\])\b/g) || [];
  ok(junk.length === 0, 'no NaN/undefined/None in the text', `${text.length} characters`, [...new Set(junk)].join(', '));
  const tiny = await page.evaluate(() => {
    const out = [];
    for (const el of document.querySelectorAll('td, th, p, li, figcaption, span, code')) {
      const fs_ = parseFloat(getComputedStyle(el).fontSize);
      if (el.innerText && el.innerText.trim() && fs_ < 9) out.push(`${el.tagName} ${fs_}px "${el.innerText.slice(0, 30)}"`);
    }
    return out;
  });
  ok(tiny.length === 0, 'text at 9 px or more', 'yes', tiny.slice(0, 5).join('; '));

  // ---- expected sections ----------------------------------------------------------------------
  const dom = await page.evaluate(domSummary);
  const expect = rep.expect || {};
  if (rep.kind === 'diff') checkDiff(dom, expect, ok, add);
  else if (rep.kind === 'audit') checkAudit(dom, expect, ok, add);
  else if (rep.kind === 'audit_text') checkAuditText(dom, expect, ok, add);
  else if (rep.kind === 'explain_text') checkExplainText(dom, expect, ok, add);
  if (dom.tokenSpans) {
    const worst = dom.lowContrast.sort((a, b) => a.ratio - b.ratio).slice(0, 3);
    add(dom.lowContrast.length ? 'WARN' : 'PASS', 'token text contrast on its colour >= 4.5 (WCAG AA)',
      dom.lowContrast.length ? `${dom.lowContrast.length} of ${dom.tokenSpans} tokens below, e.g. ${worst.map((w) => `"${w.text}" on ${w.bg} ${w.ratio.toFixed(2)}:1`).join(', ')}`
        : `${dom.tokenSpans} tokens`);
  }
  if (rep.kind === 'audit_text' || dom.iframes.length) {
    const clipped = dom.iframes.filter((f) => f.contentHeight > f.clientHeight + 1 || f.contentWidth > f.clientWidth + 1);
    ok(clipped.length === 0, 'iframes show their whole content (no inner scrolling)', `${dom.iframes.length} iframe(s)`,
      clipped.map((f) => `${f.label}: content ${f.contentWidth}x${f.contentHeight} in a ${f.clientWidth}x${f.clientHeight} frame`).join('; '));
  }

  // ---- interactive elements -------------------------------------------------------------------
  await checkInteractive(page, add, ok);

  // ---- layout at 1280 px ----------------------------------------------------------------------
  const lay = await page.evaluate(layoutStats);
  ok(lay.scrollWidth <= lay.clientWidth, `no horizontal overflow at ${WIDTH} px`,
    `document ${lay.scrollWidth} px wide in a ${lay.clientWidth} px window`,
    `document ${lay.scrollWidth} px > ${lay.clientWidth} px; widest: ${lay.offenders.join('; ')}`);
  if (lay.spill.length) add('INFO', 'blocks wider than the body column (still inside the window)', lay.spill.join('; '));
  ok(lay.overlaps.length === 0, 'no overlapping blocks', `${lay.blocks} blocks`, lay.overlaps.slice(0, 6).join('; '));

  // ---- screenshot -----------------------------------------------------------------------------
  if (rep.screenshot) {
    await page.screenshot({ path: rep.screenshot, fullPage: true });
    add('INFO', 'screenshot', `${rep.screenshot} (${WIDTH}x${lay.scrollHeight})`);
  }
  await page.close();
  return { name: rep.name, kind: rep.kind, html: rep.html, screenshot: rep.screenshot, checks };
}

function shortUrl(u) {
  return u.length > 90 ? u.slice(0, 60) + '…' + u.slice(-20) : u;
}

function isInline(u) {
  if (u == null) return true;
  const s = u.trim();
  return s === '' || s.startsWith('data:') || s.startsWith('#') || s === 'about:blank' || s === 'about:srcdoc';
}

// Every URL the page (and each srcdoc frame) refers to: src/href/srcset/poster/data attributes,
// <link>, CSS url() and @import in style sheets and style attributes.
async function collectRefs(page) {
  const out = [];
  for (const f of page.frames()) {
    const label = f === page.mainFrame() ? 'page' : `frame ${f.name() || f.url()}`;
    const r = await f.evaluate(() => {
      const refs = [];
      const attrs = ['src', 'href', 'poster', 'data', 'action', 'background', 'xlink:href'];
      for (const el of document.querySelectorAll('*')) {
        for (const a of attrs) {
          const v = el.getAttribute(a);
          if (v != null && !(el.tagName === 'A' && a === 'href')) refs.push({ where: `<${el.tagName.toLowerCase()} ${a}>`, url: v });
        }
        const ss = el.getAttribute('srcset');
        if (ss) for (const part of ss.split(',')) refs.push({ where: `<${el.tagName.toLowerCase()} srcset>`, url: part.trim().split(/\s+/)[0] });
        const st = el.getAttribute('style');
        if (st) for (const m of st.matchAll(/url\(\s*['"]?([^'")]*)/g)) refs.push({ where: `style=`, url: m[1] });
      }
      for (const sheet of document.styleSheets) {
        if (sheet.href) refs.push({ where: 'stylesheet', url: sheet.href });
        let rules = [];
        try { rules = [...sheet.cssRules]; } catch (e) { refs.push({ where: 'stylesheet (unreadable)', url: String(sheet.href) }); }
        for (const rule of rules) {
          if (rule.href) refs.push({ where: '@import', url: rule.href });
          for (const m of rule.cssText.matchAll(/url\(\s*['"]?([^'")]*)/g)) refs.push({ where: 'css url()', url: m[1] });
        }
      }
      return refs;
    }).catch((e) => [{ where: label, url: `unreadable frame: ${e}` }]);
    out.push(...r.map((x) => ({ ...x, where: `${label} ${x.where}` })));
  }
  return out;
}

// In-page: per <img>, load state, size and pixel spread (data: images are same-origin: readable).
function imageStats() {
  return [...document.images].map((img, index) => {
    const fig = img.closest('figure');
    const caption = fig?.querySelector('figcaption')?.innerText || img.alt || `img ${index}`;
    const s = { index, caption, src: img.src.slice(0, 40), complete: img.complete, naturalWidth: img.naturalWidth,
      naturalHeight: img.naturalHeight, width: img.clientWidth, height: img.clientHeight, alt: img.alt };
    if (img.naturalWidth > 0) {
      const c = document.createElement('canvas');
      c.width = img.naturalWidth; c.height = img.naturalHeight;
      const ctx = c.getContext('2d');
      ctx.drawImage(img, 0, 0);
      const d = ctx.getImageData(0, 0, c.width, c.height).data;
      let n = 0, sum = 0, sq = 0;
      const colors = new Set();
      const step = Math.max(1, Math.floor(d.length / 4 / 200000));
      for (let p = 0; p < d.length; p += 4 * step) {
        const y = 0.299 * d[p] + 0.587 * d[p + 1] + 0.114 * d[p + 2];
        n++; sum += y; sq += y * y;
        if (colors.size < 5000) colors.add((d[p] << 16) | (d[p + 1] << 8) | d[p + 2]);
      }
      s.std = Math.sqrt(Math.max(0, sq / n - (sum / n) ** 2));
      s.colors = colors.size;
    }
    return s;
  });
}

// In-page: headings, tables (headers and cells), figures, paragraphs, iframes.
function domSummary() {
  const t = (el) => (el ? el.innerText.trim() : '');
  const headings = [...document.querySelectorAll('h1,h2,h3')].map((h) => ({ level: h.tagName, text: t(h) }));
  // the text between a heading and the next heading of the same or a higher level
  const sections = {};
  for (const h of document.querySelectorAll('h2')) {
    const parts = [];
    const nodes = [];
    for (let el = h.nextElementSibling; el && el.tagName !== 'H2' && el.tagName !== 'H1'; el = el.nextElementSibling) {
      parts.push(t(el));
      nodes.push(el);
    }
    sections[t(h)] = {
      text: parts.join('\n'),
      tables: nodes.flatMap((el) => (el.tagName === 'TABLE' ? [el] : [...el.querySelectorAll('table')])).map((tb) =>
        [...tb.rows].map((r) => [...r.cells].map((c) => ({ tag: c.tagName, text: t(c), cls: c.className, title: c.title })))),
      figures: nodes.flatMap((el) => (el.tagName === 'FIGURE' ? [el] : [...el.querySelectorAll('figure')])).map((f) => ({
        caption: t(f.querySelector('figcaption')), img: !!f.querySelector('img'),
        naturalWidth: f.querySelector('img')?.naturalWidth, naturalHeight: f.querySelector('img')?.naturalHeight })),
      iframes: nodes.flatMap((el) => (el.tagName === 'IFRAME' ? [el] : [...el.querySelectorAll('iframe')])).length,
    };
  }
  const iframes = [...document.querySelectorAll('iframe')].map((f, i) => {
    const d = f.contentDocument;
    const label = f.previousElementSibling ? t(f.previousElementSibling) : `iframe ${i}`;
    return { label, clientWidth: f.clientWidth, clientHeight: f.clientHeight,
      contentWidth: d ? d.documentElement.scrollWidth : -1, contentHeight: d ? d.documentElement.scrollHeight : -1,
      text: d ? d.body.innerText : '', spans: d ? d.querySelectorAll('span').length : 0,
      coloured: d ? [...d.querySelectorAll('span')].filter((s) => s.style.background).length : 0,
      titled: d ? [...d.querySelectorAll('span')].filter((s) => s.title && isFinite(parseFloat(s.title))).length : 0 };
  });
  const lum = (c) => {
    const [r, g, b] = c.match(/\d+(\.\d+)?/g).slice(0, 3).map((v) => {
      const x = Number(v) / 255;
      return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const contrast = (el) => {
    const st = el.ownerDocument.defaultView.getComputedStyle(el);
    const a = lum(st.color), b = lum(st.backgroundColor);
    return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  };
  const tokenSpans = [...document.querySelectorAll('span.t')];
  for (const f of document.querySelectorAll('iframe')) if (f.contentDocument) tokenSpans.push(...f.contentDocument.querySelectorAll('span.t'));
  const lowContrast = tokenSpans.map((s) => ({ text: s.innerText, bg: getComputedStyle(s).backgroundColor, ratio: contrast(s) }))
    .filter((s) => s.ratio < 4.5);
  const spans = [...document.querySelectorAll('span.t')].map((s) => ({ text: s.innerText, title: s.title, bg: getComputedStyle(s).backgroundColor }));
  return { headings, sections, iframes, spans, lowContrast, tokenSpans: tokenSpans.length, text: document.body.innerText, title: document.title };
}

const isNum = (s) => /^[−-]?\d[\d,]*(\.\d+)?(e[−+-]?\d+)?$/i.test(s.trim());
const numOrDash = (s) => isNum(s) || s.trim() === '—';

function section(dom, pattern) {
  const key = Object.keys(dom.sections).find((k) => pattern.test(k));
  return key ? { key, ...dom.sections[key] } : null;
}

function checkDiff(dom, ex, ok, add) {
  ok(dom.headings.some((h) => h.level === 'H1' && /diff/i.test(h.text)), 'diff: title heading', 'present', 'no <h1> naming the diff');
  const models = ex.models || [];
  ok(models.every((m) => dom.text.includes(m)), 'diff: both model paths shown', models.join(' vs '), `missing one of ${models.join(', ')}`);
  const pred = section(dom, /prediction/i);
  const m = pred && pred.text.match(/top-1 agreement\s+([\d.]+)/);
  ok(m && Math.abs(parseFloat(m[1]) - ex.top1) < 1e-3, 'diff: prediction agreement', pred ? pred.text.replace(/\s+/g, ' ') : '',
    pred ? `expected top-1 ${ex.top1}, page says "${pred.text}"` : 'no Predictions section');
  const expl = section(dom, /explanation/i);
  const tb = expl && expl.tables[0];
  if (!tb) { ok(false, 'diff: per-method agreement table', '', 'no table under Explanations'); return; }
  const head = tb[0].map((c) => c.text);
  const rowsBy = Object.fromEntries(tb.slice(1).map((r) => [r[0].text, r.slice(1).map((c) => c.text)]));
  const missingM = ex.methods.filter((x) => !(x in rowsBy));
  const missingK = ex.measures.filter((k) => !head.includes(k));
  const badCells = Object.entries(rowsBy).flatMap(([k, cells]) => cells.filter((c) => !numOrDash(c)).map((c) => `${k}: "${c}"`));
  const shapeOk = Object.values(rowsBy).every((cells) => cells.length === head.length - 1);
  ok(!missingM.length && !missingK.length && !badCells.length && shapeOk, 'diff: per-method agreement table',
    `${Object.keys(rowsBy).length} methods x ${head.length - 1} measures (${head.slice(1).join(', ')})`,
    `missing methods ${missingM}, measures ${missingK}, bad cells ${badCells.join(', ')}, rows of equal length ${shapeOk}`);
  const valuesOk = ex.methods.every((mm) => ex.measures.every((k, j) => {
    const want = ex.values?.[mm]?.[k];
    const got = rowsBy[mm]?.[head.indexOf(k) - 1];
    return want == null ? got === '—' : Math.abs(parseFloat(got) - want) <= 1e-3 * Math.max(1, Math.abs(want));
  }));
  ok(valuesOk, 'diff: table values = report.json', 'every cell to 4 significant digits', 'a cell differs from report.json');
  if (ex.metrics?.length) {
    const met = section(dom, /metric/i);
    const mt = met && met.tables[0];
    const want = ex.methods.flatMap((mm) => ex.metrics.map((k) => `${mm}/${k}`));
    const got = mt ? mt.slice(1).map((r) => `${r[0].text}/${r[1].text}`) : [];
    const cellsOk = mt && mt.slice(1).every((r) => r.slice(2).every((c) => numOrDash(c.text)));
    ok(mt && want.every((w) => got.includes(w)) && cellsOk && mt[0].map((c) => c.text).join('|') === 'method|metric|A|B|B − A',
      'diff: metrics per version (A, B, B − A)', got.join(', '), mt ? `rows ${got}, want ${want}` : 'no Metrics section');
  }
  const worst = section(dom, /least agreeing/i);
  const figs = worst ? worst.figures : [];
  const figFor = (mm) => figs.find((f) => f.caption.startsWith(mm + ':'));
  const missingF = ex.methods.filter((mm) => !figFor(mm) || !figFor(mm).img);
  ok(worst && !missingF.length, 'diff: worst items side by side, one figure per method',
    figs.map((f) => `${f.caption} (${f.naturalWidth}x${f.naturalHeight})`).join('; '), worst ? `no figure for ${missingF}` : 'no Least agreeing items section');
  // input | map A | map B | A − B: four panels per row, `worst` rows -> a figure about as wide as tall per 4 rows
  const ratioOk = figs.every((f) => f.naturalWidth / f.naturalHeight > 0.8 * 4 / ex.worst && f.naturalWidth / f.naturalHeight < 1.6 * 4 / ex.worst);
  ok(ratioOk, `diff: figures hold ${ex.worst} rows of 4 panels (aspect)`, figs.map((f) => (f.naturalWidth / f.naturalHeight).toFixed(2)).join(', '),
    `aspect ratios ${figs.map((f) => (f.naturalWidth / f.naturalHeight).toFixed(2))}, expected about ${(4 / ex.worst).toFixed(2)}`);
  const named = ex.ranking.slice(0, 10).every((n) => worst?.text.includes(n));
  ok(named, 'diff: least agreeing items named in order', ex.ranking.slice(0, ex.worst).join(', '), `ranking not shown: ${ex.ranking}`);
}

function checkAudit(dom, ex, ok, add) {
  ok(dom.headings.some((h) => h.level === 'H1' && /audit/i.test(h.text)), 'audit: title heading', 'present', 'no <h1> naming the audit');
  ok(dom.text.includes(ex.sha256), 'audit: model sha256 shown', ex.sha256.slice(0, 16) + '…', 'sha256 missing');
  const conv = section(dom, /^conversion/i);
  ok(conv && /max \|diff\| [\d.e+-]+/.test(conv.text), 'audit: parity (conversion) section', conv?.text.slice(0, 120), conv ? conv.text : 'no Conversion section');
  const cov = section(dom, /lrp coverage/i);
  ok(!!cov && cov.text.length > 0, 'audit: LRP coverage section', cov?.text.slice(0, 80), 'no LRP coverage section');
  const sc = section(dom, /^scores/i);
  const tb = sc && sc.tables[0];
  if (tb) {
    const head = tb[0].map((c) => c.text.split('\n')[0]);
    const rows = Object.fromEntries(tb.slice(1).map((r) => [r[0].text, r.slice(1)]));
    const missing = ex.methods.filter((mm) => !(mm in rows)).concat(ex.metrics.filter((k) => !head.includes(k)));
    const bad = Object.entries(rows).flatMap(([k, cells]) => cells.filter((c) => !numOrDash(c.text)).map((c) => `${k}: ${c.text}`));
    const dirs = tb[0].slice(1).every((c) => /(higher|lower) is better/.test(c.text));
    ok(!missing.length && !bad.length && dirs, 'audit: score table (methods x metrics, direction per metric)',
      `${Object.keys(rows).length} x ${head.length - 1}`, `missing ${missing}, bad ${bad}, directions ${dirs}`);
  } else ok(false, 'audit: score table', '', 'no table under Scores');
  const san = section(dom, /sanity/i);
  const st = san && san.tables[0];
  if (st) {
    const rows = st.slice(1).map((r) => ({ m: r[0].text, verdict: r[1].text, cls: r[1].cls, sims: r.slice(2).map((c) => c.text), layers: r.slice(2).map((c) => c.title) }));
    const want = ex.sanity;
    const wrong = Object.entries(want).filter(([mm, v]) => {
      const r = rows.find((x) => x.m === mm);
      return !r || r.verdict !== (v.passed ? 'passes' : 'fails') || r.cls !== (v.passed ? 'ok' : 'bad') || r.sims.length !== v.n || !r.sims.every(isNum);
    });
    ok(!wrong.length, 'audit: sanity check table (verdict, colour, similarity per layer)',
      rows.map((r) => `${r.m} ${r.verdict} [${r.sims.join(', ')}]`).join('; '), `wrong rows: ${wrong.map((w) => w[0])}`);
    const layersNamed = rows.every((r) => r.layers.every((l) => l && l.length > 0));
    ok(layersNamed, 'audit: sanity cells name their layer (hover title)', 'yes', 'a similarity cell has no layer title');
    const plot = dom.sections[Object.keys(dom.sections).find((k) => /figures/i.test(k))]?.figures.some((f) => /sanity/i.test(f.caption));
    add(plot ? 'PASS' : 'INFO', 'audit: sanity curves plot', plot ? 'a sanity figure' : 'no plot: the sanity results are a table only (similarity per randomised layer)');
  } else ok(false, 'audit: sanity check table', '', 'no Sanity check section');
  const figs = section(dom, /^figures/i)?.figures || [];
  const curves = ex.metrics.filter((k) => !figs.some((f) => f.caption === `curve_${k}` && f.img));
  const heat = ex.methods.filter((mm) => !figs.some((f) => f.caption === `heatmaps_${mm}` && f.img));
  ok(!curves.length && !heat.length, 'audit: curve plot per metric, heatmaps per method', figs.map((f) => f.caption).join(', '),
    `missing curves ${curves}, heatmaps ${heat}`);
  const prob = section(dom, /problems/i);
  const errs = ex.errors || [];
  ok(prob && errs.every((x) => prob.text.includes(x)), 'audit: problems listed', prob?.text.replace(/\n/g, ' | ').slice(0, 160), `missing: ${errs}`);
  if (ex.policy_failures?.length) {
    const shown = ex.policy_failures.filter((l) => dom.text.includes(l));
    const hasPolicy = /polic/i.test(dom.headings.map((h) => h.text).join(' ') + ' ' + dom.text);
    ok(shown.length === ex.policy_failures.length, 'audit: policy failures shown',
      ex.policy_failures.join(' | '),
      `the command printed ${ex.policy_failures.length} failed rule(s) (${ex.policy_failures.join(' | ')}) and exited ${ex.exit_code}; the page ${hasPolicy ? 'mentions a policy but not these lines' : 'says nothing about the policy'}`);
  }
  ok(section(dom, /settings/i) !== null, 'audit: settings section', 'present', 'no Settings section');
}

function checkAuditText(dom, ex, ok, add) {
  const texts = section(dom, /^texts/i);
  const want = ex.texts * ex.methods.length;
  const labelsOk = ex.methods.every((mm) => dom.iframes.filter((f) => f.label.endsWith(`— ${mm}`)).length === ex.texts);
  ok(texts && dom.iframes.length === want && labelsOk, 'audit (texts): one coloured-token view per text and method',
    `${dom.iframes.length} views (${ex.texts} texts x ${ex.methods.join(', ')}); tokens per view ${dom.iframes.map((f) => f.spans).join(' ')}`,
    `${dom.iframes.length} iframe(s) for ${ex.texts} texts x ${ex.methods.length} method(s), labelled per method: ${labelsOk}`);
  const bad = dom.iframes.filter((f) => f.spans === 0 || f.coloured !== f.spans || f.titled !== f.spans);
  ok(bad.length === 0, 'audit (texts): every token coloured, its score on hover', 'yes', bad.map((f) => f.label).join(', '));
  const sc = section(dom, /^scores/i);
  ok(sc && sc.tables[0] && ex.metrics.every((k) => sc.tables[0][0].some((c) => c.text.startsWith(k))), 'audit (texts): score table',
    sc?.tables[0]?.[0].map((c) => c.text.split('\n')[0]).join(', '), 'missing');
}

function checkExplainText(dom, ex, ok) {
  ok(dom.headings.some((h) => h.level === 'H3' && h.text === dom.title), 'explain (text): heading = title', dom.title, 'no heading');
  const n = dom.spans.length;
  ok(n === ex.tokens.length && dom.spans.every((s, i) => s.text === ex.tokens[i]), 'explain (text): one span per token, in order',
    `${n} tokens`, `page ${dom.spans.map((s) => s.text)} vs json ${ex.tokens}`);
  const scoresOk = dom.spans.every((s, i) => Math.abs(parseFloat(s.title) - ex.scores[i]) <= 1e-3 * Math.max(1, Math.abs(ex.scores[i])));
  ok(scoresOk, 'explain (text): hover title = the token score', 'yes', 'a title differs from the .json score');
  const colours = dom.spans.map((s) => s.bg);
  const top = ex.scores.reduce((a, b) => (Math.abs(b) > Math.abs(a) ? b : a), 0);
  const iTop = ex.scores.indexOf(top);
  const rgb = (c) => c.match(/\d+/g).map(Number);
  const [r, g, b] = rgb(colours[iTop] || 'rgb(0,0,0)');
  const signOk = top > 0 ? r > b : b > r;
  ok(new Set(colours).size > 1 && signOk, 'explain (text): colours follow the scores (strongest token red if positive, blue if negative)',
    `"${ex.tokens[iTop]}" ${top.toFixed(3)} -> ${colours[iTop]}`, `${new Set(colours).size} distinct colours; strongest ${colours[iTop]}`);
  ok(dom.text.includes(ex.text), 'explain (text): the raw text shown', 'yes', 'missing');
}

// Click every interactive element and see that it does something (and throws nothing).
async function checkInteractive(page, add, ok) {
  const found = await page.evaluate(() => ({
    details: document.querySelectorAll('details > summary').length,
    buttons: document.querySelectorAll('button, input[type=button], input[type=submit], [role=button]').length,
    tabs: document.querySelectorAll('[role=tab]').length,
    sortable: [...document.querySelectorAll('th')].filter((th) => th.onclick || th.getAttribute('onclick') || th.dataset.sort !== undefined || getComputedStyle(th).cursor === 'pointer').length,
    inputs: document.querySelectorAll('select, input:not([type=button]):not([type=submit]), textarea').length,
    anchors: [...document.querySelectorAll('a[href^="#"]')].map((a) => a.getAttribute('href')),
    onclick: document.querySelectorAll('[onclick]').length,
    scripts: document.scripts.length,
  }));
  const total = found.details + found.buttons + found.tabs + found.sortable + found.inputs + found.anchors.length + found.onclick;
  if (!total) {
    add('INFO', 'interactive elements', `none (no details, buttons, tabs, sortable headers, links or forms; ${found.scripts} script(s)): a static page, nothing to click`);
    return;
  }
  add('INFO', 'interactive elements', JSON.stringify(found));
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e.message || e)));
  const snapshot = () => page.evaluate(() => document.body.innerHTML.length + ':' + [...document.querySelectorAll('*')].filter((e) => e.offsetParent !== null).length + ':' + [...document.querySelectorAll('details')].map((d) => d.open).join(''));
  // details/summary: open and close
  const det = await page.$$('details > summary');
  for (const [i, s] of det.entries()) {
    const before = await s.evaluate((x) => x.parentElement.open);
    await s.click();
    const after = await s.evaluate((x) => x.parentElement.open);
    ok(before !== after, `details #${i} toggles on click`, `${before} -> ${after}`, 'did not toggle');
  }
  for (const sel of ['button, input[type=button], [role=button]', '[role=tab]', 'th[onclick], th[data-sort]']) {
    const els = await page.$$(sel);
    for (const [i, el] of els.entries()) {
      const label = await el.evaluate((x) => (x.innerText || x.value || x.tagName).trim().slice(0, 30));
      const visible = await el.evaluate((x) => x.offsetParent !== null);
      if (!visible) { add('INFO', `${sel} #${i} "${label}"`, 'hidden, not clicked'); continue; }
      const before = await snapshot();
      const tableBefore = await page.evaluate(() => [...document.querySelectorAll('table')].map((t) => t.innerText).join('|'));
      await el.click();
      await new Promise((r) => setTimeout(r, 100));
      const after = await snapshot();
      const tableAfter = await page.evaluate(() => [...document.querySelectorAll('table')].map((t) => t.innerText).join('|'));
      ok(before !== after || tableBefore !== tableAfter, `"${label}" (${sel.split(',')[0]}) changes the page when clicked`, 'yes', 'no visible change');
    }
  }
  for (const h of found.anchors) {
    const target = await page.evaluate((id) => !!document.getElementById(decodeURIComponent(id.slice(1))) || !!document.getElementsByName(id.slice(1)).length, h);
    ok(target || h === '#', `in-page link ${h} has a target`, 'yes', 'no element with that id');
  }
  ok(errors.length === 0, 'no error while clicking', 'none', errors.join(' | '));
}

// Horizontal overflow, blocks spilling past the body's column, overlapping blocks.
function layoutStats() {
  const de = document.documentElement;
  const cw = de.clientWidth;
  const offenders = [], spill = [];
  const body = document.body.getBoundingClientRect();
  const name = (el) => `${el.tagName.toLowerCase()}${el.className ? '.' + el.className : ''} "${(el.innerText || el.getAttribute('src') || '').slice(0, 24).replace(/\s+/g, ' ')}"`;
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0) continue;
    if (r.right > cw + 0.5) offenders.push(`${name(el)} right edge ${Math.round(r.right)}`);
    else if (r.right > body.right + 1 && ['TABLE', 'PRE', 'IMG', 'FIGURE', 'P', 'IFRAME'].includes(el.tagName)) spill.push(`${name(el)} to ${Math.round(r.right)} px (body ends at ${Math.round(body.right)})`);
  }
  // overlaps between leaf-level blocks that are not nested in each other
  const sel = 'img, table, pre, h1, h2, h3, p, figcaption, iframe, li, span.t';
  const blocks = [...document.querySelectorAll(sel)].filter((el) => el.getBoundingClientRect().width > 0);
  const rects = blocks.map((el) => el.getBoundingClientRect());
  const overlaps = [];
  for (let i = 0; i < blocks.length; i++) {
    for (let j = i + 1; j < blocks.length; j++) {
      if (blocks[i].contains(blocks[j]) || blocks[j].contains(blocks[i])) continue;
      const a = rects[i], b = rects[j];
      const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (w > 1 && h > 1) overlaps.push(`${name(blocks[i])} x ${name(blocks[j])} (${Math.round(w)}x${Math.round(h)} px)`);
    }
  }
  return { scrollWidth: de.scrollWidth, clientWidth: cw, scrollHeight: de.scrollHeight, offenders: offenders.slice(0, 5),
    spill: spill.slice(0, 5), overlaps, blocks: blocks.length };
}

// ---- main (last: the helpers above are initialised) ----------------------------------------

const reports = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
const executablePath = await chromium.executablePath();
const browser = await puppeteer.launch({
  args: chromium.args, executablePath, headless: true, defaultViewport: { width: WIDTH, height: 900 },
});

const results = [];
let failures = 0;
for (const rep of reports) {
  const r = await checkReport(rep);
  results.push(r);
  failures += r.checks.filter((c) => c.status === 'FAIL').length;
}
await browser.close();
if (resultsPath) fs.writeFileSync(resultsPath, JSON.stringify(results, null, 1));
const warns = results.reduce((n, r) => n + r.checks.filter((c) => c.status === 'WARN').length, 0);
console.log(`\n${results.length} report(s), ${failures} failed check(s), ${warns} warning(s)`);
process.exit(failures ? 1 : 0);
