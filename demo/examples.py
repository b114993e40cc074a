"""Example prompts shown one click away in the demo: long, detailed ones, well past 77 tokens."""

from __future__ import annotations

DEFAULT_NEGATIVE = "blurry, low quality, deformed, watermark, text, signature"

# (short label, prompt, negative prompt)
EXAMPLES: list[tuple[str, str, str]] = [
    (
        "Harbour at dusk",
        "A quiet fishing harbour at dusk, painted in soft watercolour. In the foreground, three wooden "
        "rowing boats, one red, one white and one faded blue, are tied to a weathered stone pier covered "
        "in orange lichen. An old fisherman in a yellow raincoat sits on an upturned crate mending a green "
        "net, with a grey cat asleep beside his boots. Behind him, narrow houses painted pink, mint and "
        "ochre climb a steep hill, their windows glowing warm yellow. A white lighthouse with a red band "
        "stands at the end of the breakwater, and a crescent moon hangs low over a violet sea with a single "
        "sailboat on the horizon.",
        DEFAULT_NEGATIVE,
    ),
    (
        "Botanist's study",
        "Interior of a Victorian botanist's study, photographed with a 35mm lens in morning light. A large "
        "oak desk in the centre holds an open leather-bound herbarium with pressed ferns, a brass microscope, "
        "a magnifying glass and a half-finished cup of tea on a saucer. The left wall is lined with glass "
        "jars of seeds labelled in copperplate handwriting; the right wall has a tall window with a "
        "climbing jasmine outside. On the floor lies a Persian rug in deep red and navy, and a tabby cat "
        "sleeps on a green velvet armchair in the corner. Dust motes float in the sunbeam, and a framed "
        "map of South America hangs above a small iron stove.",
        DEFAULT_NEGATIVE,
    ),
    (
        "Market in the rain",
        "A crowded night market in the rain, cinematic, shallow depth of field. On the left, a noodle stall "
        "with steam rising from a huge copper pot, and a cook in a white apron tossing noodles in a wok over "
        "blue flames. In the centre, a young woman with a transparent umbrella and a bright yellow coat "
        "looks at a display of paper lanterns shaped like fish. On the right, a fruit seller arranges "
        "pyramids of mangoes, dragon fruit and green limes under a striped awning. Neon signs in pink and "
        "teal reflect in the puddles on the cobblestones, and a small boy in red boots jumps into the "
        "largest puddle while his dog barks beside him.",
        DEFAULT_NEGATIVE,
    ),
    (
        "Robot gardener",
        "A friendly round robot gardener with a copper body, one large round blue eye and a small antenna "
        "topped with a sprouting seedling, kneels in a terraced vegetable garden on a hillside. It holds a "
        "watering can in its left hand and a basket of red tomatoes in its right. Around it grow rows of "
        "purple cabbages, tall sunflowers, climbing beans on bamboo poles and a pumpkin patch. In the "
        "background a wooden windmill turns slowly, a flock of white geese walks along a dirt path, and "
        "snow-capped mountains rise under a pale blue sky with a few cumulus clouds. Style: detailed "
        "children's book illustration, gouache, warm palette.",
        DEFAULT_NEGATIVE,
    ),
]
