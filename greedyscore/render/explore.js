// greedyscore: clicks and keys in the coloured conversation and the fork panel become Gradio
// events (gr.HTML js_on_load: `element` is the component, `trigger` sends an event to Python),
// and tooltips are kept inside the window. The HTML it reads is documented in render/explore.py.
const keepInside = (token) => {
  const tip = token.querySelector(':scope > .gs-tip');
  if (!tip) return;
  tip.style.left = '0px';
  const box = tip.getBoundingClientRect();
  const width = document.documentElement.clientWidth;
  let shift = 0;
  if (box.right > width - 8) shift = width - 8 - box.right;
  if (box.left + shift < 8) shift = 8 - box.left;
  tip.style.left = shift + 'px';
};
const select = (turn) => {
  element.querySelectorAll('.gs-turn.gs-selected').forEach((t) => t.classList.remove('gs-selected'));
  turn.classList.add('gs-selected');
  trigger('click', {action: 'select', turn: Number(turn.dataset.turn)});
};
element.addEventListener('mouseover', (e) => {
  const token = e.target.closest('.gs-token');
  if (token) keepInside(token);
});
element.addEventListener('focusin', (e) => {
  const token = e.target.closest('.gs-token');
  if (token) keepInside(token);
});
element.addEventListener('click', (e) => {
  const share = e.target.closest('button.gs-share');
  if (share) {
    e.stopPropagation();
    trigger('click', {action: 'share', source: share.dataset.share});
    return;
  }
  const fork = e.target.closest('button.gs-fork');
  if (fork) {
    e.stopPropagation();
    const source = fork.closest('[data-source]');
    trigger('click', {action: 'fork', source: source ? source.dataset.source : '',
                      at: Number(fork.dataset.at), token: Number(fork.dataset.token)});
    return;
  }
  const show = e.target.closest('button[data-show]');
  if (show) {
    trigger('click', {action: 'show', source: show.dataset.show});
    return;
  }
  const turn = e.target.closest('[data-turn]');
  if (turn && !turn.classList.contains('gs-selected')) select(turn);
});
element.addEventListener('keydown', (e) => {
  if (e.key !== 'Enter' || e.target.closest('button')) return;
  const turn = e.target.closest('[data-turn]');
  if (turn) {
    e.preventDefault();
    select(turn);
  }
});
