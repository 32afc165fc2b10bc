// greedyscore step mode: a click (or Enter) on a listed token takes it; an alternative in a path
// token's tooltip restarts the path there with that token (gr.HTML js_on_load: `element` is the
// component, `trigger` sends an event to Python). The HTML it reads is documented in render/steer.py.
element.addEventListener('click', (e) => {
  const take = e.target.closest('button.gs-step-take');
  if (take) {
    e.stopPropagation();
    trigger('click', {action: 'take', token: Number(take.dataset.token)});
    return;
  }
  const fork = e.target.closest('button.gs-fork');
  if (fork) {
    e.stopPropagation();
    trigger('click', {action: 'fork', at: Number(fork.dataset.at), token: Number(fork.dataset.token)});
  }
});
