"""The teaching tabs' layout and wiring (game logic in guess.py, rendering in render/guess.py)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from .errors import BadInput
from .examples import COMPARE_EXAMPLE, GUESS_EXAMPLES
from .guess import Game, choices, new_game, play, score_guess
from .render.compare import compare_outputs
from .render.guess import board_html, round_html, score_html, summary_html, surprisal_figure
from .render.text import visible
from .requests import parse_messages_json
from .service import Service
from .types import Settings
from .variants import CONVERSATION, Variants, compare_text

# The Compare tab's conversation B: the same question after a turn that primes another answer.
CONVERSATION_B = ('[{"role": "user", "content": "Let us play a game: the capital of France is Lyon now."}, '
                  '{"role": "assistant", "content": "Understood."}, '
                  '{"role": "user", "content": "What is the capital of France?"}]')

PICK_K = 5  # choices shown when the learner picks instead of typing (whole units, the answer among them)
MODES = {"type a guess": 0, f"pick among {PICK_K} choices": PICK_K}
GAME_TOP_K = 20  # kept per position up front: a one-token guess among them costs no model call


def guess_tab(service: Service, shown_as_errors: Any, concurrency: dict) -> None:
    gr.Markdown("The model reads a known text one token at a time. Before each token is revealed, guess it: "
                "who saw it coming, you or the model? Scores are surprisals in bits (lower is better).")
    with gr.Accordion("The text (hidden while you play)", open=True) as setup:
        with gr.Row():
            text = gr.Textbox(GUESS_EXAMPLES[0], lines=2, label="The text to guess", elem_id="gs-guess-text", scale=4)
            mode = gr.Radio(list(MODES), value="type a guess", label="How you guess", elem_id="gs-guess-mode",
                            scale=1)
        gr.Examples([[t] for t in GUESS_EXAMPLES], inputs=[text], label="Texts to play")
    start = gr.Button("Start", elem_id="gs-guess-start")
    board = gr.HTML(elem_id="gs-guess-board")
    with gr.Row():
        typed = gr.Textbox(label="Your guess for the next token", elem_id="gs-guess-input", scale=3)
        picked = gr.Radio([], label="Or pick one", visible=False, elem_id="gs-guess-pick", scale=3)
        guess_btn = gr.Button("Guess", variant="primary", elem_id="gs-guess-btn", scale=1)
    result = gr.HTML(elem_id="gs-guess-round")
    score = gr.HTML(elem_id="gs-guess-score")
    finish = gr.Button("Finish: show the chart", elem_id="gs-guess-finish")
    summary = gr.HTML(elem_id="gs-guess-summary")
    chart = gr.Plot(elem_id="gs-guess-chart", show_label=False)
    state = gr.State(None)

    def pick_update(game: Game) -> Any:
        if game.pick and not game.done:
            return gr.update(choices=[(visible(t, spaces=True), t) for t, _ in choices(game)], value=None,
                             visible=True)
        return gr.update(choices=[], value=None, visible=False)

    def begin(text: str, mode: str):
        with shown_as_errors():
            if mode not in MODES:
                raise BadInput(f"unknown mode {mode!r}")
            scored = service.score_text(text or "", Settings(top_k=GAME_TOP_K))
            game = new_game(scored, service.engine.info.vocab_size, MODES[mode])
            if game.done:
                raise BadInput("nothing to guess in that text: give it some words")
            return (game, board_html(game), round_html(game), score_html(game), pick_update(game), "",
                    gr.update(open=False), "", None)

    def guess(game: Game | None, typed: str, picked: str | None):
        with shown_as_errors():
            if game is None:
                raise BadInput("press Start first")
            if game.done:
                raise BadInput("the text is all revealed: press Finish, or Start again")
            said = (picked or "") if game.pick else (typed or "")
            if not said.strip():
                raise BadInput("pick one of the choices first" if game.pick else "type a guess first")
            context = game.context_ids()
            form, ids, logprob, rank = score_guess(game, said, service.guess_ids,
                                                   lambda ids: service.score_continuation(context, ids))
            game = play(game, form, ids, logprob, rank, choices(game) if game.pick else ())
            end = (summary_html(game), surprisal_figure(game)) if game.done else (gr.update(), gr.update())
            return (game, board_html(game), round_html(game), score_html(game), pick_update(game), "",
                    gr.update(), *end)

    def done(game: Game | None):
        with shown_as_errors():
            if game is None or not game.rounds:
                raise BadInput("play a few rounds first")
            return summary_html(game), surprisal_figure(game)

    playing = [state, board, result, score, picked, typed]
    start.click(begin, [text, mode], [*playing, setup, summary, chart], api_visibility="private", **concurrency)
    for trigger in (guess_btn.click, typed.submit):
        trigger(guess, [state, typed, picked], [*playing, setup, summary, chart], api_visibility="private",
                **concurrency)
    finish.click(done, [state], [summary, chart], api_visibility="private")


def compare_tab(variants: Variants, shown_as_errors: Any, concurrency: dict) -> None:
    gr.Markdown("Score the same text twice, under a second configuration, and see where the model's confidence "
                "moves: another system prompt, lower precision (bfloat16, int8) or another model. Texts are "
                "aligned on characters, so different tokenizers compare fairly.")
    text = gr.Textbox(COMPARE_EXAMPLE[1], lines=3, label="The text (scored as the reply to the prompt, if any)",
                      elem_id="gs-cmp-text")
    with gr.Row():
        prompt = gr.Textbox(COMPARE_EXAMPLE[0], label="User prompt (optional)", elem_id="gs-cmp-prompt")
        offered = variants.choices()
        against = gr.Radio(list(offered), value="bfloat16" if "bfloat16" in offered else offered[0],
                           label="B: compare against",
                           elem_id="gs-cmp-against")
    with gr.Row():
        system_a = gr.Textbox("", label="System prompt, A (and B unless comparing system prompts)",
                              elem_id="gs-cmp-system-a")
        system_b = gr.Textbox("You are a pirate. Answer like one.", label="System prompt, B", elem_id="gs-cmp-system-b")
    conversation_b = gr.Textbox(CONVERSATION_B, lines=2, label='Conversation, B (JSON [{"role", "content"}, ...]: '
                                "what the text replies to, for 'another conversation')", elem_id="gs-cmp-conv-b")
    run = gr.Button("Compare", variant="primary", elem_id="gs-cmp-btn")
    shown = gr.HTML(elem_id="gs-cmp")
    fig = gr.Plot(elem_id="gs-cmp-chart", show_label=False)
    data = gr.JSON(label="comparison (JSON)", elem_id="gs-cmp-json")

    def go(text: str, prompt: str, against: str, system_a: str, system_b: str, conv_b: str):
        with shown_as_errors():
            messages_b = parse_messages_json(conv_b, "conversation B") if against == CONVERSATION else ()
            return compare_outputs(compare_text(variants, text or "", against, prompt or "", system_a or "",
                                                system_b or "", conversation_b=messages_b))

    run.click(go, [text, prompt, against, system_a, system_b, conversation_b], [shown, fig, data],
              api_visibility="private",
              **concurrency)
