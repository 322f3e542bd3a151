"""A small English corpus for training the tiny models' tokenizers offline.

No tokenizer hub is reachable, so the tiny models train their own tokenizers on
this text.  It is neutral, hand-written English (a few KB) plus a drill that
repeats every verbalizer word in the contexts a template puts it in, so byte-level
BPE learns each word as ONE token both with and without a leading space, and
WordPiece learns it as one whole word.  Changing this text changes the tiny
models: bump their cache version in :mod:`secptune.checkpoints` when you do.
"""

from __future__ import annotations

# Label and template words used by the built-in tasks and the tests.
VERBALIZER_WORDS = (
    "great", "terrible", "bad", "good", "positive", "negative",
    "World", "Sports", "Business", "Tech", "Science",
    "world", "sports", "business", "tech", "science",
    "Yes", "No", "yes", "no", "Maybe", "true", "false", "It", "was", "News",
    "?", ",", ".",
)

TEXT = """\
The morning was quiet and the streets were still wet from the rain.
A small cafe near the station opened at seven and served fresh bread.
She walked to the library every day and read a chapter before lunch.
The river runs through the old town and under three stone bridges.
Children played in the park while their parents talked on the benches.
The museum has a new exhibition about ships, maps and early travel.
He planted tomatoes, beans and carrots in the garden behind the house.
The train to the coast leaves every hour and takes about two hours.
Our teacher asked us to write a short essay about a place we love.
The recipe needs two cups of flour, one egg, milk and a pinch of salt.
In winter the lake freezes and people skate on it in the afternoon.
The market sells apples, pears, cheese, honey and warm soup.
A group of students visited the farm to learn how cows are milked.
The concert started late, but the music was good and the hall was full.
My neighbor repairs old clocks and bicycles in a small workshop.
The bridge was closed for two weeks while workers painted the railings.
We cooked dinner together and talked about plans for the summer.
The book describes a long journey across mountains and deserts.
Birds gathered on the roof when the sun came out after the storm.
The city council met on Tuesday to discuss new bus routes.
The film tells a simple story about a family that moves to a new city.
Critics said the acting was good, although the plot was a little slow.
The ending was terrible, but the first half of the movie was great.
One review was positive and praised the music; another was negative.
The hotel room was clean and quiet, and the staff were friendly.
The food arrived cold, the service was slow, and the bill was wrong.
It was a pleasant evening, and the view from the hill was lovely.
The weather report says it will be sunny on Friday and cloudy on Sunday.
The company opened a new office and hired forty engineers this year.
Shares rose after the bank reported higher profits for the quarter.
The team won the final game after a long and difficult season.
The coach said the players worked hard and deserved the victory.
Researchers found a new species of frog in the forest near the river.
Scientists measured the temperature of the ocean at many depths.
A new phone was released today with a larger screen and a faster chip.
The software update fixes several problems and improves battery life.
Leaders from many countries met to talk about trade and the economy.
The election results will be announced late in the evening.
Is the second sentence true if the first one is true? The answer is yes.
Do the two sentences mean the same thing? The answer is no.
Question: does the text support the claim? Answer: maybe.
The statement is false, because the meeting was held on Monday.
The statement is true, because the report was published last week.
A good plan is simple, clear and easy to follow.
The road was bad after the flood, so the trip took longer than usual.
The students built a small robot that can follow a line on the floor.
The kitchen smelled of coffee, cinnamon and fresh oranges.
At the end of the day the shop owner counted the money and locked the door.
The old map showed roads that no longer exist.
They painted the fence white and planted flowers along the path.
The doctor said that regular walks are good for the heart.
Our class read a poem about the sea and wrote our own poems.
The airport was busy because many flights were delayed by fog.
The factory makes chairs, tables and shelves from local wood.
The price of fruit went up after a dry summer.
Volunteers cleaned the beach and collected bags of plastic.
The village holds a festival every autumn with music and dancing.
The lecture explained how plants turn sunlight into energy.
A quiet room, a warm light and a good book make a fine evening.
The package arrived on time, and everything inside was in good order.
World News: talks between the two countries continued for a third day.
Sports News: the home team scored twice in the last ten minutes.
Business News: the airline reported a loss and plans to cut costs.
Tech News: engineers tested a faster network in three cities.
Science News: astronomers observed a bright comet near the sun.
This article is about the world, sports, business, tech or science.
Sentence one and sentence two are paraphrases of each other.
The first sentence says the shop is open; the second says it is closed.
"""


def drill(repeats: int = 40) -> list[str]:
    """Lines that repeat each verbalizer word alone, after a space and before punctuation."""
    lines = []
    for word in VERBALIZER_WORDS:
        lines += [f"{word} {word} {word}. It was {word} ? {word} , {word} ."] * repeats
    return lines


def corpus() -> list[str]:
    """Training lines: the text a few times (for sub-word statistics) plus the drill."""
    return TEXT.splitlines() * 8 + drill()
