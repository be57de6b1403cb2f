"""Data tables of the synthetic demo set: colours, shapes, motions, backgrounds, question templates, answers."""
from __future__ import annotations

GENERATOR_VERSION = "videoneva-demo-1"

# Shape colours: few and far apart in RGB (and after CLIP normalisation); none is grey, so none
# can be confused with a background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (245, 225, 40),
    "white": (245, 245, 245),
}

# Fixed order: two-shape descriptions list shapes in this order.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Motions of a shape in a video (a still image's shapes are "still"). The value is the canonical
# answer to a motion question; "changing color" keeps position and size and switches colour once.
MOTIONS: dict[str, str] = {
    "left": "left",
    "right": "right",
    "up": "up",
    "down": "down",
    "growing": "growing",
    "shrinking": "shrinking",
    "changing color": "changing color",
}
TRANSLATIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
STILL = "still"

# Plain backgrounds: greys only (distinct from every shape colour). "Noisy" adds static Gaussian
# noise (the same texture in every frame of a clip) with this standard deviation.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (16, 16, 16),
    "dark gray": (64, 64, 64),
    "gray": (112, 112, 112),
}
NOISE_STD = 18.0

# Geometry, in px of a 224 px reference square; scaled by min(W, H) / 224 (the CLIP centre crop
# of a WxH frame is its central min(W, H) square, and every shape stays inside it).
REF_SIDE = 224
MARGIN = 6                      # gap between shapes and the safe square's edge
GAP = 8                         # gap between the bounding boxes of two shapes, in every frame
SIZE_ONE = (44, 66)             # side of the bounding box: single-shape scenes
SIZE_TWO = (38, 54)             # … two-shape scenes
TRAVEL = (0.38, 0.52)           # translation distance over the clip, as a fraction of the side
GROW_SMALL = (26, 34)           # growing: from small to large (shrinking: the reverse)
GROW_LARGE = (66, 78)
COLOR_SWITCH = (0.4, 0.6)       # where in the clip (0..1) a colour change happens

# Question templates per type. "{media}" is "video" or "image"; "{shape}" / "{color}" name the
# shape the question is about. "single" templates need a scene with one shape; "by_shape" and
# "by_color" refer to one shape of the scene and are valid in one- and two-shape scenes alike.
QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "motion", "count", "describe")
IMAGE_QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "count")

TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "color": {
        "single": ("What color is the shape?", "What is the color of the object?",
                   "Which color does the shape in the {media} have?"),
        "by_shape": ("What color is the {shape}?", "What is the color of the {shape}?"),
    },
    "shape": {
        "single": ("What shape is shown?", "What kind of shape is in the {media}?", "Name the shape."),
        "by_color": ("What shape is the {color} object?", "Which shape is {color}?"),
    },
    "motion": {
        "single": ("What is the shape doing?", "How does the object move?", "What happens to the shape?"),
        "by_shape": ("What is the {shape} doing?", "How does the {shape} move?"),
        "by_color": ("What is the {color} shape doing?",),
    },
    "count": {
        "any": ("How many shapes are there?", "How many objects are in the {media}?", "Count the shapes."),
    },
    "describe": {
        "any": ("Describe the video.", "What happens in the video?", "Give a short description of the video."),
    },
}

# describe answers: one clause per shape (SHAPES order), joined by " and ", ending with ".".
# A translating shape: "a red circle moving left"; growing / shrinking: "a red circle growing";
# changing colour: "a red circle turning blue".
DESCRIBE_MOTION: dict[str, str] = {
    "left": "moving left", "right": "moving right", "up": "moving up", "down": "moving down",
    "growing": "growing", "shrinking": "shrinking", "changing color": "turning {color1}",
}
COUNT_WORDS: dict[int, str] = {1: "1", 2: "2"}
