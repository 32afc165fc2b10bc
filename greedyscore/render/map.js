// greedyscore: the map above a long reply (HTML documented in render/map.py). One handler on the
// document serves every map on the page, whatever component drew it: a click on a cell or a run,
// or Enter on the focused strip, scrolls to that token in the reply right after the map, focuses
// and highlights it, and marks its bar on the confidence chart of the component's reply.
(() => {
  if (window.gsMapReady) return;
  window.gsMapReady = true;
  // which chart shows the reply of which component (ids set in greedyscore/ui)
  const CHARTS = {'gs-reply': 'gs-reply-chart', 'gs-score': 'gs-score-chart', 'gs-shared-reply': 'gs-shared-chart',
                  'gs-step-path': 'gs-step-chart'};
  const MARK = 'gs-selected';
  let chosen = null; // {map, k, chart}: the last jump, re-marked when its chart is drawn again

  const chartOf = (map) => {
    for (let el = map; el; el = el.parentElement) {
      if (el.id && CHARTS[el.id]) return document.getElementById(CHARTS[el.id]);
    }
    return null;
  };
  const tokenAt = (map, k) => {
    const box = map.nextElementSibling;
    if (!box) return null;
    for (let j = k; j >= 0 && j > k - 16; j--) { // a split character's span carries its first index
      const t = box.querySelector(`.gs-token[data-i="${j}"]`);
      if (t) return t;
    }
    return null;
  };
  const current = (map) => { // the map still shown, and (in a chat) its reply the one charted
    if (!map.isConnected) return false;
    const turn = map.closest('.gs-turn-reply[data-turn]');
    return !turn || turn.classList.contains('gs-selected');
  };
  const mark = () => {
    if (!chosen || !chosen.chart) return;
    const gd = chosen.chart.querySelector('.js-plotly-plot');
    if (!gd || !gd.layout || !window.Plotly || !current(chosen.map)) return;
    const k = chosen.k;
    const shapes = (gd.layout.shapes || []).filter((s) => s.name !== MARK);
    const had = (gd.layout.shapes || []).find((s) => s.name === MARK);
    if (had && had.x0 === k - 0.5) return;
    shapes.push({type: 'rect', name: MARK, xref: 'x', yref: 'paper', x0: k - 0.5, x1: k + 0.5, y0: 0, y1: 1,
                 line: {color: '#d6336c', width: 2}, fillcolor: 'rgba(214, 51, 108, 0.15)', layer: 'above'});
    gd.dataset.gsSelected = String(k);
    window.Plotly.relayout(gd, {shapes});
  };
  const watch = (chart) => { // Gradio redraws the figure with Plotly.react: put the mark back
    if (!chart || chart.gsWatched) return;
    chart.gsWatched = true;
    let queued = false;
    new MutationObserver(() => {
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => { queued = false; mark(); });
    }).observe(chart, {childList: true, subtree: true});
  };
  const moveCursor = (strip, k) => {
    const cells = strip.children;
    k = Math.max(0, Math.min(cells.length - 1, k));
    const old = cells[Number(strip.dataset.cur) || 0];
    if (old) old.classList.remove('gs-map-cur');
    const cell = cells[k];
    cell.classList.add('gs-map-cur');
    strip.dataset.cur = String(k);
    strip.setAttribute('aria-valuenow', String(k));
    strip.setAttribute('aria-valuetext', cell.title);
    return k;
  };
  const jump = (map, k) => {
    const token = tokenAt(map, k);
    if (!token) return;
    moveCursor(map.querySelector('.gs-map-cells'), k);
    document.querySelectorAll('.gs-token.gs-jumped').forEach((t) => t.classList.remove('gs-jumped'));
    token.classList.add('gs-jumped');
    token.scrollIntoView({block: 'center'});
    token.focus({preventScroll: true});
    chosen = {map, k, chart: chartOf(map)};
    watch(chosen.chart);
    mark();
  };
  const perRow = (strip) => {
    const cells = strip.children;
    let n = 1;
    while (n < cells.length && cells[n].offsetTop === cells[0].offsetTop) n++;
    return n;
  };

  document.addEventListener('click', (e) => {
    const target = e.target.closest('.gs-map-cells > span[data-k], .gs-map-runs button[data-k]');
    if (target) jump(target.closest('.gs-map'), Number(target.dataset.k));
  });
  document.addEventListener('keydown', (e) => {
    const strip = e.target.closest && e.target.closest('.gs-map-cells');
    if (!strip || e.target !== strip) return;
    const k = Number(strip.dataset.cur) || 0;
    const row = perRow(strip);
    const to = {ArrowRight: k + 1, ArrowLeft: k - 1, ArrowDown: k + row, ArrowUp: k - row, Home: 0,
                End: strip.children.length - 1, PageDown: k + 5 * row, PageUp: k - 5 * row}[e.key];
    if (to !== undefined) {
      e.preventDefault();
      moveCursor(strip, to);
    } else if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      jump(strip.closest('.gs-map'), k);
    }
  });
})();
