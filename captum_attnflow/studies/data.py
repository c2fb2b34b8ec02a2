"""Movie-review snippets with human sentiment ratings: an offline stand-in for SST-2.

Hutto & Gilbert (ICWSM 2014) collected 10,605 Rotten-Tomatoes snippets — the same source
sentences as the Stanford Sentiment Treebank — each rated by 20 people on ``[-4, 4]``. The file
``movieReviewSnippets_GroundTruth.txt`` ships inside ``additional_resources/hutto_ICWSM_2014.tar.gz``
of the ``vaderSentiment`` *source* distribution on PyPI (MIT licence, © 2016 C.J. Hutto). Rating
``> 0`` vs ``< 0`` gives a binary task close to SST-2 (the 37 snippets rated exactly 0 are left
out).

The source distribution is fetched once from PyPI as a plain file (its address from PyPI's
simple index, JSON form), **without running anything from it** — ``pip download`` of an sdist
would execute its build backend — and its SHA-256 is checked against the pinned
:data:`VADER_SDIST_SHA256` before it is opened. The snippet file is extracted into the cache
directory (:func:`default_cache_dir`) after checking :data:`SNIPPETS_SHA256`; every later read,
and a file passed by hand, is checked the same way.
"""

from __future__ import annotations

import json
import random
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from captum_attnflow.utils.files import default_cache_dir, file_sha256, verify_sha256

#: The PyPI source distribution that carries the data.
VADER_REQUIREMENT = "vaderSentiment==3.3.2"
VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
#: SHA-256 of :data:`VADER_SDIST` as published on PyPI (checked before the archive is opened).
VADER_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
#: PyPI's simple index of the project (PEP 691 JSON: file names, addresses and hashes).
VADER_INDEX_URL = "https://pypi.org/simple/vadersentiment/"
#: Path of the nested data archive inside the source distribution.
DATA_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
SNIPPETS_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
SNIPPETS_FILE = "movieReviewSnippets_GroundTruth.txt"
#: SHA-256 of :data:`SNIPPETS_FILE` inside the pinned distribution.
SNIPPETS_SHA256 = "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"
#: what a user can pass to ``--data`` when the download is not possible
MANUAL_DOWNLOAD = (
    f"download {VADER_SDIST} (SHA-256 {VADER_SDIST_SHA256}) from the files of vaderSentiment 3.3.2 on PyPI "
    f"and pass it as source=... (--data on the command line)"
)


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

    The archive is checked against :data:`VADER_SDIST_SHA256` before it is opened and the
    extracted file against :data:`SNIPPETS_SHA256` before it is written.

    Args:
        sdist: path to ``vaderSentiment-3.3.2.tar.gz``.
        destination: directory that receives :data:`SNIPPETS_FILE`.

    Returns:
        The extracted file's path.

    Raises:
        FileNotFoundError: ``sdist`` does not exist.
        ValueError: the archive is not the pinned distribution (hash), or does not contain the data.
    """
    sdist = Path(sdist)
    if not sdist.is_file():
        raise FileNotFoundError(f"the vaderSentiment source distribution {sdist} does not exist.")
    verify_sha256(sdist, VADER_SDIST_SHA256, f"the pinned {VADER_SDIST}")
    with tarfile.open(sdist, "r:gz") as outer:
        try:
            inner_file = outer.extractfile(DATA_ARCHIVE)
        except KeyError:
            inner_file = None
        if inner_file is None:
            raise ValueError(f"{sdist} does not contain {DATA_ARCHIVE}; {MANUAL_DOWNLOAD}.")
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
    verify_sha256(partial, SNIPPETS_SHA256, f"the pinned {SNIPPETS_FILE}")
    partial.replace(target)
    return target


def fetch(url: str, accept: str | None = None) -> bytes:
    """The body at ``url`` (HTTPS GET, 60 s timeout)."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def download_sdist(directory: Path) -> Path:
    """Download the pinned ``vaderSentiment`` source distribution into ``directory``.

    The file's address comes from PyPI's simple index (JSON); the file is downloaded as bytes —
    nothing from it is run — and kept only if its SHA-256 is :data:`VADER_SDIST_SHA256`. A
    verified copy already in ``directory`` is reused.

    Raises:
        RuntimeError: PyPI cannot be reached, or does not list the file; the message says how
            to provide the file by hand.
        ValueError: the downloaded file is not the pinned one (it is deleted).
    """
    directory.mkdir(parents=True, exist_ok=True)
    sdist = directory / VADER_SDIST
    if sdist.is_file() and file_sha256(sdist) == VADER_SDIST_SHA256:
        return sdist
    try:
        index = json.loads(fetch(VADER_INDEX_URL, "application/vnd.pypi.simple.v1+json"))
        url = next(entry["url"] for entry in index["files"] if entry["filename"] == VADER_SDIST)
    except StopIteration:
        raise RuntimeError(f"PyPI's index of vaderSentiment does not list {VADER_SDIST}; {MANUAL_DOWNLOAD}.") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RuntimeError(
            f"could not read PyPI's index of vaderSentiment ({type(error).__name__}: {error}); {MANUAL_DOWNLOAD}."
        ) from None
    partial = sdist.with_suffix(".partial")
    try:
        partial.write_bytes(fetch(url))
    except OSError as error:
        raise RuntimeError(f"could not download {url} ({type(error).__name__}: {error}); {MANUAL_DOWNLOAD}.") from None
    try:
        verify_sha256(partial, VADER_SDIST_SHA256, f"the pinned {VADER_SDIST} (downloaded from {url})")
    except ValueError:
        partial.unlink()
        raise
    partial.replace(sdist)
    return sdist


def load_movie_snippets(source: str | Path | None = None, cache_dir: str | Path | None = None) -> list[Snippet]:
    """All 10,605 rated movie-review snippets, fetched and cached on first use.

    Args:
        source: ``None`` (use the cache, downloading from PyPI if needed), the ``vaderSentiment``
            source distribution ``.tar.gz``, or an already extracted ground-truth ``.txt`` file.
            Every file is checked against its pinned SHA-256 before it is read.
        cache_dir: where the extracted file is kept (default :func:`default_cache_dir`).

    Returns:
        The snippets in file order.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: a file is not the pinned one (its hash differs) or is malformed.
        RuntimeError: the download failed (see :func:`download_sdist`).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    data_dir = cache / "data"
    cached = data_dir / SNIPPETS_FILE
    if source is not None and Path(source).suffix == ".txt":
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"the movie-snippet file {path} does not exist.")
        verify_sha256(path, SNIPPETS_SHA256, f"the pinned {SNIPPETS_FILE}")
    elif source is not None:
        path = extract_snippets(source, data_dir)
    elif cached.is_file() and file_sha256(cached) == SNIPPETS_SHA256:
        path = cached
    else:  # nothing cached, or a damaged copy: fetch (or reuse the verified download) again
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
