"""examples/own_program as a team ships it outside any image, from four places at once: the task
(topics/) in their git repository, their metric (team_metrics/) packed into a ConfigMap, a package
the metric needs (topic-words) from their package index, and their shared settings (team_settings)
on a volume (the tests create and serve them all)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from support.jobdocs import ROOT
from support.pyindex import build_wheel, git_repository

OWN_PROGRAM = ROOT / "examples" / "own_program"
WORDS_PACKAGE = "topic-words"
WORDS_REQUIREMENT = "topic-words==1.0"
TEAM_METRIC = "team_metrics.words:topic_match_canonical"

_WORDS = '''"""The team's shared normalisation of topic names."""

SYNONYMS = {"football": "sport", "soccer": "sport", "cooking": "food", "song": "music", "trip": "travel"}


def canonical(word: object) -> str:
    text = str(word or "").strip().lower()
    return SYNONYMS.get(text, text)
'''

_TEAM_METRIC = '''"""topic_match on the team's canonical topic names (topic_words: their package, installed by pip)."""

from types import SimpleNamespace

from team_settings import CANONICAL_TOPICS
from topic_words import canonical

from topics.metric import topic_match


def topic_match_canonical(example, pred, trace=None):
    guess = canonical(getattr(pred, "topic", "")) if CANONICAL_TOPICS else getattr(pred, "topic", "")
    return topic_match(example, SimpleNamespace(topic=guess), trace)
'''

_SETTINGS = '''"""The team's settings, shared on a volume."""

CANONICAL_TOPICS = True
'''


@dataclass(frozen=True)
class TeamTask:
    repo: Path  # a git repository with topics/ under src/
    commit: str
    metrics: Path  # a folder with team_metrics/, to pack into a ConfigMap
    wheel: Path  # topic-words, for the index
    settings: Path  # a folder with team_settings.py, to put on a volume


def team_task(work: Path) -> TeamTask:
    files = {f"src/topics/{p.name}": p.read_text() for p in (OWN_PROGRAM / "topics").glob("*.py")}
    repo = work / "team-task"
    commit = git_repository(repo, files)
    metrics = work / "team-metrics"
    (metrics / "team_metrics").mkdir(parents=True)
    (metrics / "team_metrics" / "__init__.py").write_text("")
    (metrics / "team_metrics" / "words.py").write_text(_TEAM_METRIC)
    wheel = build_wheel(WORDS_PACKAGE, "1.0", {"topic_words.py": _WORDS}, work / "wheels")
    settings = work / "team-settings"
    settings.mkdir()
    (settings / "team_settings.py").write_text(_SETTINGS)
    return TeamTask(repo=repo, commit=commit, metrics=metrics, wheel=wheel, settings=settings)
