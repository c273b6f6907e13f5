"""Answer parsing: realistic Face-LLaVA answers → structured results, or None."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.facellava.answers import (
    CELEBA_ATTRIBUTES,
    EMOTIONS,
    FACS_ACTION_UNITS,
    ActionUnitsResult,
    AgeResult,
    AttributesResult,
    EmotionResult,
    Task,
    parse_action_units,
    parse_age,
    parse_answer,
    parse_attributes,
    parse_emotion,
)

EMOTION_CASES = [
    (
        "The person appears to be happy. The raised cheeks and the upturned lip corners "
        "suggest a genuine smile.",
        "happy",
    ),
    ("The emotion shown in the video is sadness.", "sad"),
    ("Happiness.", "happy"),
    ("The person is not angry; they look surprised, with raised brows.", "surprised"),
    ("There is no sign of fear, anger or sadness; the face is calm and relaxed.", "neutral"),
    ("A mix of surprise and fear is visible on the face.", "surprised"),
    ("Although there are hints of surprise, the dominant emotion is fear.", "fearful"),
    ("The emotion is not anger but sadness, shown by the drooping lip corners.", "sad"),
    ("The content of the video shows a man who looks disgusted, wrinkling his nose.", "disgusted"),
    ("The individual shows no particular emotion; the face stays expressionless.", "neutral"),
    ("The person's expression conveys contempt, with one lip corner raised.", "contemptuous"),
    ("She seems upset, with tears in her eyes and a trembling chin.", "sad"),
    ("The man is furious: his brows are lowered and his lips pressed together.", "angry"),
    ("He looks scared. His eyes are wide open and his mouth is stretched.", "fearful"),
    ("The woman appears astonished, her jaw dropped and eyebrows raised.", "surprised"),
    ("The person is smiling broadly at someone off camera.", "happy"),
    ("Judging by the wide smile, she is joyful rather than anxious.", "happy"),
    ("The subject does not look happy. Instead, the face shows irritation.", "angry"),
    ("The person in the video seems anxious, glancing around nervously.", "anxious"),
    ("The facial expression can be described as disdainful.", "contemptuous"),
    ("While the person is smiling, the overall emotion conveyed is sadness.", "sad"),
    ("The person's expression is not neutral; it shows anger.", "angry"),
    (
        "Based on the facial cues, the person seems to be feeling fear. The eyes are wide "
        "open and the brows are drawn together, typical signs of fear rather than surprise.",
        "fearful",
    ),
    # MAFW's classes beyond the basic seven: anxiety, helplessness, disappointment.
    ("The emotion shown is helplessness: the shoulders drop and the gaze is lowered.", "helpless"),
    ("He appears powerless and resigned in the face of the news.", "helpless"),
    ("She looks disappointed, her lips pressed together and her eyes cast down.", "disappointed"),
    ("The man feels let down rather than angry.", "disappointed"),
    ("The dominant emotion is disappointment, although she is not crying.", "disappointed"),
    ("The woman looks worried, biting her lip and glancing at the door.", "anxious"),
    ("There is fear in his wide eyes, not mere unease.", "fearful"),
]


def test_emotion_vocabulary_is_the_mafw_set() -> None:
    assert set(EMOTIONS) == {
        "happy", "sad", "angry", "fearful", "surprised", "disgusted", "neutral",
        "contemptuous", "anxious", "helpless", "disappointed",
    }  # fmt: skip


@pytest.mark.parametrize(("text", "label"), EMOTION_CASES)
def test_emotion_answer_gives_the_committed_label(text: str, label: str) -> None:
    result = parse_emotion(text)
    assert result is not None, text
    assert result.label == label
    assert result.label in EMOTIONS
    assert result.matched_text.lower() in text.lower()


AGE_CASES = [
    ("The person appears to be around 35 years old.", 35.0, None),
    ("He is in his thirties, judging by the faint lines around the eyes.", 35.0, (30.0, 39.0)),
    ("20-25", 22.5, (20.0, 25.0)),
    ("The individual looks to be 20 to 25 years old.", 22.5, (20.0, 25.0)),
    ("She is in her mid-20s, judging by the smooth skin.", 25.0, (23.0, 26.0)),
    ("She is in her late teens.", 18.5, (17.0, 19.0)),
    ("The individual looks twenty-five years old.", 25.0, None),
    ("The person is approximately 62. Grey hair and wrinkles suggest an older adult.", 62.0, None),
    ("I would estimate the age to be between 40 and 45 years old.", 42.5, (40.0, 45.0)),
    ("The person is a 30-year-old man with a short beard.", 30.0, None),
    ("The age of the person is estimated to be 48 years.", 48.0, None),
    ("Age: 27", 27.0, None),
    ("The man looks about forty. His receding hairline supports this.", 40.0, None),
    ("The woman is likely in her early 50s, given her grey hair.", 52.0, (50.0, 53.0)),
    ("A teenager, probably.", 16.5, (13.0, 19.0)),
    ("27", 27.0, None),
    ("The man looks older, maybe 70 or so.", 70.0, None),
    ("The person is 1 of the actors and appears to be 20 years old.", 20.0, None),
    ("The person appears to be in their 60's.", 65.0, (60.0, 69.0)),
    ("Given the smooth skin and youthful features, they are around 19 years of age.", 19.0, None),
    ("I estimate the person to be 32 based on the smooth skin and dark hair.", 32.0, None),
    ("Judging by the wrinkles, I take him to be 58, perhaps older.", 58.0, None),
    ("He appears to be in his late 20s to early 30s.", 30.0, (26.0, 33.0)),
    ("The woman looks to be in her late twenties to early thirties.", 30.0, (26.0, 33.0)),
    ("The person is probably in their 20s or 30s.", 30.0, (20.0, 39.0)),
    ("She is in her late teens to early 20s.", 20.5, (17.0, 23.0)),
    ("He seems to be in his mid-to-late 30s.", 36.5, (33.0, 39.0)),
    ("The man appears to be in his mid-40s to early 50s, with grey hair.", 48.5, (43.0, 53.0)),
]  # fmt: skip


@pytest.mark.parametrize(("text", "years", "range_years"), AGE_CASES)
def test_age_answer_gives_years_and_range(
    text: str, years: float, range_years: tuple[float, float] | None
) -> None:
    result = parse_age(text)
    assert result is not None, text
    assert result.years == pytest.approx(years)
    assert result.range_years == range_years


ATTRIBUTE_CASES = [
    (
        "The man has black hair, wears glasses and has no beard.",
        {"Male", "Black_Hair", "Eyeglasses", "No_Beard"},
        set(),
    ),
    (
        "She does not wear a hat. Her blonde, wavy hair falls to her shoulders and she smiles.",
        {"Blond_Hair", "Wavy_Hair", "Smiling"},
        {"Male", "Wearing_Hat"},
    ),
    (
        "A young woman with heavy makeup, red lipstick and earrings.",
        {"Young", "Heavy_Makeup", "Wearing_Lipstick", "Wearing_Earrings"},
        {"Male"},
    ),
    (
        "He has a mustache and a goatee, but no eyeglasses.",
        {"Male", "Mustache", "Goatee"},
        {"Eyeglasses"},
    ),
    ("The person is clean-shaven and wears a necktie.", {"No_Beard", "Wearing_Necktie"}, set()),
    ("The image is blurry.", {"Blurry"}, set()),
    (
        "The man has grey hair, a receding hairline and bags under his eyes. He is not smiling.",
        {"Male", "Gray_Hair", "Receding_Hairline", "Bags_Under_Eyes"},
        {"Smiling"},
    ),
    (
        "The person wears spectacles and a beanie; he has a full beard and sideburns.",
        {"Eyeglasses", "Wearing_Hat", "Male", "Sideburns"},
        {"No_Beard"},
    ),
    (
        "The woman has high cheekbones, arched eyebrows, an oval face and rosy cheeks.",
        {"High_Cheekbones", "Arched_Eyebrows", "Oval_Face", "Rosy_Cheeks"},
        {"Male"},
    ),
    (
        "He is without a beard, with a bald head and a double chin.",
        {"Male", "No_Beard", "Bald", "Double_Chin"},
        set(),
    ),
    (
        "The elderly gentleman has bushy eyebrows and a big nose, and his mouth is slightly open.",
        {"Male", "Bushy_Eyebrows", "Big_Nose", "Mouth_Slightly_Open"},
        {"Young"},
    ),
    (
        "Analyzing the facial characteristics: the person has straight brown hair with bangs, "
        "pale skin and a pointy nose. There are no earrings or necklace.",
        {"Straight_Hair", "Brown_Hair", "Bangs", "Pale_Skin", "Pointy_Nose"},
        {"Wearing_Earrings", "Wearing_Necklace"},
    ),
    (
        "The attractive young man has stubble and narrow eyes. Glasses are not present.",
        {"Attractive", "Young", "Male", "5_o_Clock_Shadow", "Narrow_Eyes"},
        {"Eyeglasses"},
    ),
    (
        "She wears a necklace. She is not wearing makeup, and she has big lips.",
        {"Wearing_Necklace", "Big_Lips"},
        {"Male", "Heavy_Makeup"},
    ),
    (
        "A chubby boy with curly hair, a cap and dark brown hair, no glasses.",
        {"Chubby", "Male", "Wavy_Hair", "Wearing_Hat", "Brown_Hair", "Young"},
        {"Eyeglasses"},
    ),
    (
        "The woman's hair is blond and wavy. She isn't wearing glasses.",
        {"Blond_Hair", "Wavy_Hair"},
        {"Male", "Eyeglasses"},
    ),
    (
        "The person, aged around 40 years old, has a 5 o'clock shadow.",
        {"5_o_Clock_Shadow"},
        set(),
    ),
]


@pytest.mark.parametrize(("text", "present", "absent"), ATTRIBUTE_CASES)
def test_attribute_description_maps_to_celeba_names(
    text: str, present: set[str], absent: set[str]
) -> None:
    result = parse_attributes(text)
    assert result is not None, text
    assert set(result.present) == present
    assert set(result.absent) == absent
    assert set(result.present).isdisjoint(result.absent)
    assert result.present == [a for a in CELEBA_ATTRIBUTES if a in present]


def test_attribute_negation_does_not_leak_into_the_next_sentence() -> None:
    result = parse_attributes("He does not wear a hat. Eyeglasses sit on his nose.")
    assert result is not None
    assert "Eyeglasses" in result.present
    assert "Wearing_Hat" in result.absent


AU_CASES = [
    ("AU6 (cheek raiser) and AU12 are active.", [6, 12]),
    ("Active: AU 4, brow lowerer; AU7.", [4, 7]),
    ("AUs 1, 2 and 5 are present, indicating surprise. AU4 is not active.", [1, 2, 5]),
    ("The lip corner puller and cheek raiser are visible.", [6, 12]),
    ("AU12B, AU25", [12, 25]),
    ("The active facial action units are AU1, AU2, AU26 and AU27.", [1, 2, 26, 27]),
    ("Action units 6 and 12 are activated, which indicates a smile.", [6, 12]),
    ("Visible: AU 4 (Brow Lowerer), AU 7 (Lid Tightener), AU 23 (Lip Tightener).", [4, 7, 23]),
    ("AU1+2 and AU5 are clearly visible, and there is no AU12.", [1, 2, 5]),
    ("The person shows raised inner brows, and the lips part slightly.", [1, 25]),
    ("The nose wrinkler (AU9) and upper lip raiser (AU10) are active: disgust.", [9, 10]),
    ("AU15 and AU17 are present; the lip corners are depressed and the chin is raised.", [15, 17]),
    ("The active units are AU-12 and AU-6. No brow lowerer is visible.", [6, 12]),
    ("The eyes are closed (AU43) while AU45 is absent.", [43]),
    ("AU20 (lip stretcher), AU24, AU28.", [20, 24, 28]),
    ("Identified action units: AU12, AU12, AU6.", [6, 12]),
    ("Active AUs: 6, 12.", [6, 12]),
    ("AU6, AU12 and AU25 with an intensity of 3.", [6, 12, 25]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "numbers"), AU_CASES)
def test_action_units_are_sorted_unique_with_facs_names(text: str, numbers: list[int]) -> None:
    result = parse_action_units(text)
    assert result is not None, text
    assert [unit.number for unit in result.units] == numbers
    assert all(unit.name == FACS_ACTION_UNITS[unit.number] for unit in result.units)


def test_explicit_no_action_units_gives_an_empty_list() -> None:
    assert parse_action_units("No action units are active in this image.") == ActionUnitsResult(
        units=[]
    )


# Answers that assert nothing a parser looks for: no emotion asserted, no age, no
# attributes, no active action units.
ANSWERS_WITHOUT_A_RESULT: dict[Callable[[str], object], list[str]] = {
    parse_emotion: [
        "",
        "I cannot determine that from the video.",
        "The video shows a person talking to the camera in a bright room.",
        "The person is not angry.",
        "There is no sign of fear or disgust.",
        "The video shows a person who looks neither angry nor happy.",
    ],
    parse_age: [
        "",
        "Guessing the age of a person from a picture is hard.",
        "The man in the picture is middle-aged, with wrinkles.",
        "The person is wearing 2 earrings.",
        "AU 12 and AU 6 are active.",
        "There seem to be 2 people in the frame.",
        "The chance of a smile seems to be 30 percent.",
    ],
    parse_attributes: [
        "",
        "The picture shows a face.",
        "Nothing notable can be said about this image.",
    ],
    parse_action_units: [
        "",
        "The person looks happy.",
        "AU4 is not active.",
        "AU 99 and AU 3 are active.",
    ],
}


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        pytest.param(parse, text, id=f"{parse.__name__}-{text}")
        for parse, texts in ANSWERS_WITHOUT_A_RESULT.items()
        for text in texts
    ],
)
def test_answer_without_what_its_parser_looks_for_is_none(
    parse: Callable[[str], object], text: str
) -> None:
    assert parse(text) is None


def test_facs_table_has_the_common_action_units() -> None:
    common = {1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 24, 25, 26, 27, 28, 43, 45, 46}
    assert common <= set(FACS_ACTION_UNITS)
    assert FACS_ACTION_UNITS[12] == "Lip Corner Puller"


@pytest.mark.parametrize(
    ("task", "text", "result_type"),
    [
        (Task.EMOTION, "The emotion is happiness.", EmotionResult),
        (Task.AGE, "Around 30 years old.", AgeResult),
        (Task.ATTRIBUTES, "A man with glasses.", AttributesResult),
        (Task.ACTION_UNITS, "AU12 is active.", ActionUnitsResult),
        ("emotion", "The emotion is happiness.", EmotionResult),
    ],
)
def test_parse_answer_dispatches_on_task(task: Task, text: str, result_type: type) -> None:
    assert isinstance(parse_answer(task, text), result_type)


@pytest.mark.parametrize("task", list(Task))
def test_parse_answer_of_blank_text_is_none(task: Task) -> None:
    assert parse_answer(task, "   \n") is None


def test_parsed_result_round_trips_through_the_event_wire_format() -> None:
    from worker.events import FaceEvent, event_id_for

    result = parse_answer(Task.ACTION_UNITS, "AU6 and AU12.")
    event = FaceEvent(
        event_id=event_id_for("cam1", 3, 1.0, "action_units"),
        stream_id="cam1",
        track_id=3,
        task=Task.ACTION_UNITS,
        result=result,
        answer_text="AU6 and AU12.",
        window_start_s=1.0,
        window_end_s=2.0,
        wall_time_s=0.0,
        frame_wall_time_s=0.0,
        box_xyxy=(0, 0, 1, 1),
        detector_score=0.9,
        model_id="m",
        worker_id="w",
    )
    assert FaceEvent.model_validate_json(event.model_dump_json()) == event


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300), task=st.sampled_from(list(Task)))
def test_parse_answer_never_raises_on_arbitrary_text(text: str, task: Task) -> None:
    result = parse_answer(task, text)
    assert result is None or result.kind == task.value


def test_attribute_vocabulary_file_refuses_a_rule_it_cannot_read() -> None:
    from models.facellava.answers import _attribute_rule

    assert _attribute_rule({"attribute": "Bangs", "pattern": "bangs"})[0] == "Bangs"
    for bad in (
        {"attribute": "Bangz", "pattern": "bangs"},  # not a CelebA attribute
        {"attribute": "Bangs"},  # neither pattern nor hair
        {"attribute": "Bangs", "pattern": "x", "hair": "y"},  # both
        {"attribute": "Bangs", "pattern": "x", "negateable": False},  # misspelt key
        {"attribute": "Bangs", "pattern": "x", "says": "maybe"},
        "Bangs",  # not a table
        {"attribute": "Bangs", "pattern": "x", "negatable": "false"},  # a string, not a bool
        {"attribute": "Bangs", "pattern": "x", "also": "|y"},  # also goes with hair only
        {"attribute": "Bangs", "pattern": 5},
        {"attribute": "Bangs", "pattern": "(unclosed"},
        {"attribute": "Bushy_Eyebrows", "pattern": "bushy {BRWO}"},  # misspelt placeholder
    ):
        with pytest.raises(ValueError, match=r"answer_vocabulary\.toml"):
            _attribute_rule(bad)


@pytest.mark.parametrize(
    "table",
    [{"12": "lip corner pull"}, {"3": ["x"]}, {"twelve": ["x"]}, {"12": ["(x"]}, ["x"]],
)
def test_action_unit_names_refuse_what_is_not_a_list_of_regexes_per_facs_unit(table) -> None:
    from models.facellava.answers import _action_unit_names

    with pytest.raises(ValueError, match=r"answer_vocabulary\.toml"):
        _action_unit_names(table)


def test_answer_vocabulary_ships_as_package_data() -> None:
    import tomllib
    from fnmatch import fnmatch
    from pathlib import Path

    from models.facellava.answers import VOCABULARY_FILE

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
    assert any(fnmatch(VOCABULARY_FILE.name, p) for p in patterns["models.facellava"])
