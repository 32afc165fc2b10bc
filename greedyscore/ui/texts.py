"""The tabs on known text: Score text (teacher-forced, with calibration), Guess the next token
(game logic in guess.py) and Compare (two configurations, aligned on characters)."""

from __future__ import annotations

import time

import gradio as gr

from ..errors import BadInput
from ..examples import CALIBRATION_SAMPLE, COMPARE_EXAMPLE, GUESS_EXAMPLES, SCORE_EXAMPLES
from ..exports import Exports
from ..guess import Game, choices
from ..render import View, legend_html, render_outputs
from ..render.calibration import calibration_html, reliability_figure
from ..render.compare import compare_outputs, divergence_figure
from ..render.guess import board_html, round_html, score_html, summary_html, surprisal_figure
from ..render.text import visible
from ..service import Service
from ..sharing.document import SharedItem, share_text
from ..types import Message, ScoredReply
from ..variants import CONVERSATION, Variants
from . import actions
from .parts import DEFAULT_VIEW, PRIVATE, Controls, Numbers, UIConfig, link_box, shown_as_gr_errors
from .share import Sharing

# The Compare tab's conversation B: the same question after a turn that primes another answer.
CONVERSATION_B = ('[{"role": "user", "content": "Let us play a game: the capital of France is Lyon now."}, '
                  '{"role": "assistant", "content": "Understood."}, '
                  '{"role": "user", "content": "What is the capital of France?"}]')
PICK_K = 5  # choices shown when the learner picks instead of typing (whole units, the answer among them)
MODES = {"type a guess": 0, f"pick among {PICK_K} choices": PICK_K}


class ScoreTab:
    """The Score-text tab (built by the constructor, handlers as methods)."""

    def __init__(self, service: Service, controls: Controls, exports: Exports, config: UIConfig,
                 sharing: Sharing) -> None:
        self.service, self.exports, self.sharing = service, exports, sharing
        self.text = gr.Textbox(lines=6, label="Text to score (teacher-forced)", elem_id="gs-score-text")
        with gr.Row():
            self.prompt = gr.Textbox(lines=1, label="…as the assistant's reply to (optional user message)", scale=4)
            conversation = gr.Checkbox(label='the text is a conversation: JSON [{"role", "content"}, ...]', scale=2)
        with gr.Row():
            button = gr.Button("Score", variant="primary", elem_id="gs-score-btn", scale=3)
            sample = gr.Button("Load the calibration sample (English + Chinese)", elem_id="gs-cal-sample", scale=2)
        gr.Examples(list(SCORE_EXAMPLES), inputs=[self.text], label="Texts to try")
        self.shown = gr.HTML(legend_html(DEFAULT_VIEW),
                             label="Text, token by token", elem_id="gs-score")
        with gr.Row():
            share = gr.Button("Share this result", elem_id="gs-score-share", size="sm", scale=0,
                              visible=sharing.store is not None)
            self.link = link_box()
        self.nums = Numbers("text", "score")
        with gr.Accordion("Calibration: is the model as often right as it is sure?", open=True):
            gr.Markdown("At each position of the text, the model's most likely next token (top-1) is *right* when "
                        "it is the real next token. Positions are grouped by the top-1 probability: a calibrated "
                        "model is right 70% of the time when it says 70% (the dashed diagonal).")
            self.cal_summary = gr.HTML(elem_id="gs-cal-summary")
            self.cal_plot = gr.Plot(elem_id="gs-cal-plot", show_label=False)
        self.reply, self.after = gr.State(None), gr.State(())  # after: the messages the text was scored after
        self.drawn = [self.shown, *self.nums.outputs[:3]]
        sample.click(lambda: (CALIBRATION_SAMPLE, False), None, [self.text, conversation], **PRIVATE)
        button.click(self.score, [self.text, self.prompt, conversation, controls.top_k, *controls.view],
                     [*self.drawn, self.reply, self.after, *self.nums.outputs[3:], self.cal_summary, self.cal_plot,
                      self.link], **config.model, **PRIVATE)
        share.click(self.share_scored, [self.reply, self.after], [self.link], queue=False, **PRIVATE)
        for comp in controls.view:
            comp.change(self.redraw, [self.reply, *controls.view], self.drawn, **PRIVATE)

    def draw(self, reply: ScoredReply | None, view: View) -> dict:
        return dict(zip(self.drawn, render_outputs(reply, view)))

    def redraw(self, reply: ScoredReply | None, color_by: str, palette: str, threshold: float) -> dict:
        with shown_as_gr_errors():
            return self.draw(reply, View.make(color_by, palette, threshold))

    def score(self, text: str, prompt: str, conversation: bool, top_k: float, color_by: str, palette: str,
              threshold: float) -> dict:
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            reply, after = actions.score(self.service, text, prompt, top_k, conversation)
            json_file, csv_file = self.exports.write(reply)
            return {**self.draw(reply, view), self.reply: reply, self.after: after,
                    self.nums.json_file: json_file, self.nums.csv_file: csv_file, self.link: "",
                    self.cal_summary: calibration_html(reply.calibration),
                    self.cal_plot: reliability_figure(reply.calibration)}

    def open(self, item: SharedItem, view: View) -> dict:
        """A shared text, to score again or share on."""
        prompt = item.messages[-1].content if item.messages else ""
        return {self.text: item.reply.text, self.prompt: prompt, **self.draw(item.reply, view),
                self.reply: item.reply, self.after: item.messages}

    def share_scored(self, reply: ScoredReply | None, after: tuple[Message, ...], request: gr.Request) -> dict:
        with shown_as_gr_errors():
            if reply is None:
                raise BadInput("score a text first, then share it")
            item = share_text(reply, after, actions.identity(self.service), time.time())
            return {self.link: self.sharing.link(item, request)}


class GuessTab:
    """The Guess-the-next-token tab (built by the constructor, handlers as methods)."""

    def __init__(self, service: Service, config: UIConfig) -> None:
        self.service = service
        gr.Markdown("The model reads a known text one token at a time. Before each token is revealed, guess it: "
                    "who saw it coming, you or the model? Scores are surprisals in bits (lower is better).")
        with gr.Accordion("The text (hidden while you play)", open=True) as self.setup:
            with gr.Row():
                text = gr.Textbox(GUESS_EXAMPLES[0], lines=2, label="The text to guess", elem_id="gs-guess-text",
                                  scale=4)
                mode = gr.Radio(list(MODES), value="type a guess", label="How you guess", elem_id="gs-guess-mode",
                                scale=1)
            gr.Examples([[t] for t in GUESS_EXAMPLES], inputs=[text], label="Texts to play")
        start = gr.Button("Start", elem_id="gs-guess-start")
        self.board = gr.HTML(elem_id="gs-guess-board")
        with gr.Row():
            self.typed = gr.Textbox(label="Your guess for the next token", elem_id="gs-guess-input", scale=3)
            self.picked = gr.Radio([], label="Or pick one", visible=False, elem_id="gs-guess-pick", scale=3)
            guess = gr.Button("Guess", variant="primary", elem_id="gs-guess-btn", scale=1)
        self.result, self.score = gr.HTML(elem_id="gs-guess-round"), gr.HTML(elem_id="gs-guess-score")
        finish = gr.Button("Finish: show the chart", elem_id="gs-guess-finish")
        self.summary = gr.HTML(elem_id="gs-guess-summary")
        self.chart = gr.Plot(elem_id="gs-guess-chart", show_label=False)
        self.state = gr.State(None)  # the Game
        outputs = [self.state, self.board, self.result, self.score, self.picked, self.typed, self.setup,
                   self.summary, self.chart]
        start.click(self.begin, [text, mode], outputs, **config.model, **PRIVATE)
        for trigger in (guess.click, self.typed.submit):
            trigger(self.guess, [self.state, self.typed, self.picked], outputs, **config.model, **PRIVATE)
        finish.click(self.finish, [self.state], [self.summary, self.chart], **PRIVATE)

    def playing(self, game: Game) -> dict:
        if game.pick and not game.done:
            pick = gr.update(choices=[(visible(t, spaces=True), t) for t, _ in choices(game)], value=None, visible=True)
        else:
            pick = gr.update(choices=[], value=None, visible=False)
        return {self.state: game, self.board: board_html(game), self.result: round_html(game),
                self.score: score_html(game), self.picked: pick, self.typed: ""}

    def begin(self, text: str, mode: str) -> dict:
        with shown_as_gr_errors():
            if mode not in MODES:
                raise BadInput(f"unknown mode {mode!r}")
            game = actions.start_game(self.service, text, MODES[mode])
            if game.done:
                raise BadInput("nothing to guess in that text: give it some words")
            return {**self.playing(game), self.setup: gr.update(open=False), self.summary: "", self.chart: None}

    def guess(self, game: Game | None, typed: str, picked: str | None) -> dict:
        with shown_as_gr_errors():
            if game is None:
                raise BadInput("press Start first")
            if game.done:
                raise BadInput("the text is all revealed: press Finish, or Start again")
            said = (picked or "") if game.pick else (typed or "")
            if not said.strip():
                raise BadInput("pick one of the choices first" if game.pick else "type a guess first")
            game = actions.guess(self.service, game, said)
            return {**self.playing(game), **(self.finish(game) if game.done else {})}

    def finish(self, game: Game | None) -> dict:
        with shown_as_gr_errors():
            if game is None or not game.rounds:
                raise BadInput("play a few rounds first")
            return {self.summary: summary_html(game), self.chart: surprisal_figure(game)}


class CompareTab:
    """The Compare tab (built by the constructor, `run` its handler)."""

    def __init__(self, variants: Variants, config: UIConfig) -> None:
        self.variants = variants
        gr.Markdown("Score the same text twice, under a second configuration, and see where the model's "
                    "confidence moves: another system prompt, lower precision (bfloat16, int8) or another model. "
                    "Texts are aligned on characters, so different tokenizers compare fairly. With one tokenizer on "
                    "both sides, each token also gets the divergence of B's whole next-token distribution from A's.")
        text = gr.Textbox(COMPARE_EXAMPLE[1], lines=3, label="The text (scored as the reply to the prompt, if any)",
                          elem_id="gs-cmp-text")
        with gr.Row():
            prompt = gr.Textbox(COMPARE_EXAMPLE[0], label="User prompt (optional)", elem_id="gs-cmp-prompt")
            offered = variants.choices()
            against = gr.Radio(list(offered), value="bfloat16" if "bfloat16" in offered else offered[0],
                               label="B: compare against", elem_id="gs-cmp-against")
        with gr.Row():
            system_a = gr.Textbox("", label="System prompt, A (and B unless comparing system prompts)",
                                  elem_id="gs-cmp-system-a")
            system_b = gr.Textbox("You are a pirate. Answer like one.", label="System prompt, B",
                                  elem_id="gs-cmp-system-b")
        conversation_b = gr.Textbox(CONVERSATION_B, lines=2, label='Conversation, B (JSON [{"role", "content"}, '
                                    "...]: what the text replies to, for 'another conversation')",
                                    elem_id="gs-cmp-conv-b")
        run = gr.Button("Compare", variant="primary", elem_id="gs-cmp-btn")
        shown, chart = gr.HTML(elem_id="gs-cmp"), gr.Plot(elem_id="gs-cmp-chart", show_label=False)
        self.steps = gr.Plot(elem_id="gs-cmp-kl-chart", show_label=False)  # per-step divergence, or why none
        self.outputs = [shown, chart, gr.JSON(label="comparison (JSON)", elem_id="gs-cmp-json")]  # as /compare's
        run.click(self.run, [text, prompt, against, system_a, system_b, conversation_b], [*self.outputs, self.steps],
                  **config.model, **PRIVATE)

    def run(self, text: str, prompt: str, against: str, system_a: str, system_b: str, conv_b: str) -> dict:
        with shown_as_gr_errors():
            messages_b = actions.parse_messages_json(conv_b, "conversation B") if against == CONVERSATION else ()
            cmp = actions.compare(self.variants, text, prompt, against, system_a, system_b, conversation_b=messages_b)
            return {**dict(zip(self.outputs, compare_outputs(cmp))), self.steps: divergence_figure(cmp)}

