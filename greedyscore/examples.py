"""The demo's examples, chosen by running each on the embedded SmolLM2-135M-Instruct (greedy, 128
tokens): each answers sensibly, except one kept on purpose to show a repetition loop.
tests/test_examples.py re-checks them against the model, so a model change that breaks one shows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    prompt: str
    label: str
    loops: bool = False  # a teaching example: greedy decoding falls into a repetition loop


CHAT_EXAMPLES: tuple[Example, ...] = (
    Example("What is the capital of France?", "What is the capital of France?"),
    Example("用一句话介绍北京。", "用一句话介绍北京。 (Chinese)"),
    Example("What is 12 times 7?", "What is 12 times 7? (a wrong answer: how sure was it?)"),
    Example("List three animals that live in the ocean.", "List three animals that live in the ocean."),
    Example("Give me a haiku about autumn.", "Give me a haiku about autumn. (a repetition loop, on purpose)",
            loops=True),
)

SCORE_EXAMPLES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "北京是中国的首都，也是一座历史悠久的城市。",
    "Paris is the capital of France, and Rome is the capital of Italy.",
)

# Known text for the calibration diagram: a few paragraphs written for greedyscore (plain facts and
# ordinary prose, English then Chinese), long enough for ten bins to mean something.
CALIBRATION_SAMPLE = """\
Rivers begin as rain and melting snow in the hills. Small streams join into larger ones, and the \
water carves a valley as it flows down towards the sea. Along the way it carries sand and stones, \
and where the river slows down, near its mouth, it drops them and builds a delta.

People have always settled beside rivers. A river gives water to drink and to grow food, fish to \
eat, and a road for boats long before there were railways. Many of the oldest cities in the world, \
such as Cairo on the Nile and Baghdad on the Tigris, grew up on the banks of a great river.

Today rivers still matter. They turn the turbines of power stations, carry goods on barges and \
water the fields of farmers. But they also flood, and towns must build walls and leave room for \
the water when heavy rain falls in the spring.

长江是中国最长的河流，全长约六千三百公里。它发源于青藏高原，向东流经许多省份，最后在上海附近流入东海。\
长江两岸有很多重要的城市，比如重庆、武汉和南京。几千年来，人们在江边种田、捕鱼，也用船运送货物。\
今天，长江上的三峡大坝是世界上最大的水力发电站之一。
"""

# Texts for the guessing game: short, everyday, with a few easy and a few hard tokens.
GUESS_EXAMPLES: tuple[str, ...] = (
    "Once upon a time, a little girl lived with her mother in a small house at the edge of the forest.",
    "To make a cup of tea, boil the water, put a tea bag in the cup, and pour the hot water over it.",
    "今天天气很好，我们一起去公园散步吧。",
)

# The Compare tab's first example: a reply whose confidence moves under bfloat16 or another system prompt.
COMPARE_EXAMPLE: tuple[str, str] = ("What is the capital of France?",
                                    "The capital of France is Paris. It is known for the Eiffel Tower.")
