"""Movie-review snippets with human sentiment ratings: an offline stand-in for SST-2.

Hutto & Gilbert (ICWSM 2014) collected 10,605 Rotten-Tomatoes snippets — the same source
sentences as the Stanford Sentiment Treebank — each rated by 20 people on ``[-4, 4]``. The file
``movieReviewSnippets_GroundTruth.txt`` ships inside ``additional_resources/hutto_ICWSM_2014.tar.gz``
of the ``vaderSentiment`` *source* distribution on PyPI (MIT licence, © 2016 C.J. Hutto). Rating
``> 0`` vs ``< 0`` gives a binary task close to SST-2 (the 37 snippets rated exactly 0 are left
out).

The data is fetched once with ``pip download`` (PyPI is the only index needed) and the snippet
file is extracted into the cache directory (:func:`default_cache_dir`); later calls read the
cached file.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

#: The PyPI source distribution that carries the data.
VADER_REQUIREMENT = "vaderSentiment==3.3.2"
VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
#: Path of the nested data archive inside the source distribution.
DATA_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
SNIPPETS_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
SNIPPETS_FILE = "movieReviewSnippets_GroundTruth.txt"
#: Environment variable that overrides the cache directory.
CACHE_ENV = "CAPTUM_ATTNFLOW_CACHE"


@dataclass(frozen=True)
class Snippet:
    """One rated movie-review snippet.

    Attributes:
        id: the snippet's id in the source file (1-based).
        rating: mean human rating in ``[-4, 4]``.
        text: the snippet.
    """

    id: int
    rating: float
    text: str

    @property
    def label(self) -> int:
        """Binary sentiment: 1 for a positive rating, 0 for a negative one."""
        return int(self.rating > 0)


def default_cache_dir() -> Path:
    """``$CAPTUM_ATTNFLOW_CACHE`` if set, else ``~/.cache/captum-attnflow``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "captum-attnflow")


def parse_snippets(text: str) -> list[Snippet]:
    """Parse the tab-separated ``id<TAB>rating<TAB>text`` lines of the ground-truth file.

    Raises:
        ValueError: a non-empty line that does not have three fields or a numeric rating.
    """
    snippets = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            if len(fields) != 3:
                raise ValueError(f"expected 3 tab-separated fields, found {len(fields)}")
            snippets.append(Snippet(id=int(fields[0]), rating=float(fields[1]), text=fields[2].strip()))
        except ValueError as error:
            raise ValueError(f"line {number} of the movie-snippet file is malformed ({error}): {line[:80]!r}") from None
    return snippets


def extract_snippets(sdist: str | Path, destination: Path) -> Path:
    """Extract the movie-snippet file from the ``vaderSentiment`` source distribution.

    Args:
        sdist: path to ``vaderSentiment-3.3.2.tar.gz``.
        destination: directory that receives :data:`SNIPPETS_FILE`.

    Returns:
        The extracted file's path.

    Raises:
        FileNotFoundError: ``sdist`` does not exist.
        ValueError: the archive does not contain the data (not the expected distribution).
    """
    sdist = Path(sdist)
    if not sdist.is_file():
        raise FileNotFoundError(f"the vaderSentiment source distribution {sdist} does not exist.")
    with tarfile.open(sdist, "r:gz") as outer:
        try:
            inner_file = outer.extractfile(DATA_ARCHIVE)
        except KeyError:
            inner_file = None
        if inner_file is None:
            raise ValueError(
                f"{sdist} does not contain {DATA_ARCHIVE}; pass the source distribution of "
                f"{VADER_REQUIREMENT} (pip download --no-deps --no-binary :all: {VADER_REQUIREMENT})."
            )
        with tarfile.open(fileobj=inner_file, mode="r:gz") as inner:
            try:
                data = inner.extractfile(SNIPPETS_MEMBER)
            except KeyError:
                data = None
            if data is None:
                raise ValueError(f"{sdist}: {DATA_ARCHIVE} does not contain {SNIPPETS_MEMBER}.")
            content = data.read()
    destination.mkdir(parents=True, exist_ok=True)
    target = destination / SNIPPETS_FILE
    partial = target.with_suffix(".partial")
    partial.write_bytes(content)
    partial.replace(target)
    return target


def download_sdist(directory: Path) -> Path:
    """``pip download`` the ``vaderSentiment`` source distribution into ``directory``.

    Raises:
        RuntimeError: pip failed (no network access to PyPI); the message says how to provide the
            file by hand.
    """
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        VADER_REQUIREMENT, "-d", str(directory),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    sdist = directory / VADER_SDIST
    if result.returncode != 0 or not sdist.is_file():
        raise RuntimeError(
            f"could not download {VADER_REQUIREMENT} from PyPI ({result.stderr.strip()[-300:]}). "
            f"Download it elsewhere with `pip download --no-deps --no-binary :all: {VADER_REQUIREMENT}` "
            f"and pass the .tar.gz as source=... (--data on the command line)."
        )
    return sdist


def load_movie_snippets(source: str | Path | None = None, cache_dir: str | Path | None = None) -> list[Snippet]:
    """All 10,605 rated movie-review snippets, fetched and cached on first use.

    Args:
        source: ``None`` (use the cache, downloading with pip if needed), the ``vaderSentiment``
            source distribution ``.tar.gz``, or an already extracted ground-truth ``.txt`` file.
        cache_dir: where the extracted file is kept (default :func:`default_cache_dir`).

    Returns:
        The snippets in file order.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    data_dir = cache / "data"
    if source is not None and Path(source).suffix == ".txt":
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"the movie-snippet file {path} does not exist.")
    elif source is not None:
        path = extract_snippets(source, data_dir)
    elif (data_dir / SNIPPETS_FILE).is_file():
        path = data_dir / SNIPPETS_FILE
    else:
        path = extract_snippets(download_sdist(cache / "downloads"), data_dir)
    return parse_snippets(path.read_text(encoding="utf-8"))


def sentiment_split(
    snippets: list[Snippet], *, test_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Snippet], list[Snippet]]:
    """A fixed, seeded train/test split of the polar snippets (rating 0 left out).

    Args:
        snippets: from :func:`load_movie_snippets`.
        test_fraction: share of the polar snippets that goes to the test set, in ``(0, 1)``.
        seed: the shuffle seed; the same seed and data give the same split on every machine.

    Returns:
        ``(train, test)`` lists of :class:`Snippet`.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}.")
    polar = [snippet for snippet in snippets if snippet.rating != 0]
    order = list(range(len(polar)))
    random.Random(seed).shuffle(order)
    cut = max(1, round(len(polar) * test_fraction))
    if cut >= len(polar):
        raise ValueError(f"test_fraction={test_fraction} leaves no training data from {len(polar)} polar snippets.")
    test = [polar[i] for i in sorted(order[:cut])]
    train = [polar[i] for i in sorted(order[cut:])]
    return train, test
