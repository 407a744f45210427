"""Programming language of a source file, from its extension.

The 18 languages of Arctic-SnowCoder's phase 1 (PAPER.md) plus the markup and data
formats that the StarCoder filters name (Markdown, JSON, YAML, HTML, XML). Names are
lowercase and are what datasets, curriculum configs (``languages:``) and reports use.
"""

from __future__ import annotations

from pathlib import PurePosixPath

# The paper's phase-1 languages, in its order.
CODE_LANGUAGES: tuple[str, ...] = (
    "python",
    "java",
    "cpp",
    "c",
    "javascript",
    "php",
    "csharp",
    "go",
    "typescript",
    "sql",
    "ruby",
    "rust",
    "jupyter",
    "scala",
    "kotlin",
    "shell",
    "dart",
    "swift",
)
# Formats the filters have rules for; curated like code unless a config leaves them out.
MARKUP_LANGUAGES: tuple[str, ...] = ("markdown", "json", "yaml", "html", "xml")
LANGUAGES: tuple[str, ...] = CODE_LANGUAGES + MARKUP_LANGUAGES

EXTENSIONS: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".pyw": "python",
    ".java": "java",
    ".cpp": "cpp",
    ".cc": "cpp",
    ".cxx": "cpp",
    ".c++": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".hxx": "cpp",
    ".h++": "cpp",
    ".c": "c",
    ".h": "c",  # C and C++ share headers; The Stack files .h under C
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".php": "php",
    ".cs": "csharp",
    ".go": "go",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".sql": "sql",
    ".rb": "ruby",
    ".rs": "rust",
    ".ipynb": "jupyter",
    ".scala": "scala",
    ".sc": "scala",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".sh": "shell",
    ".bash": "shell",
    ".zsh": "shell",
    ".ksh": "shell",
    ".dart": "dart",
    ".swift": "swift",
    ".md": "markdown",
    ".markdown": "markdown",
    ".json": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".xml": "xml",
}

# Names other datasets use for the same languages (The Stack's ``lang`` column, GitHub linguist).
ALIASES: dict[str, str] = {
    "c++": "cpp",
    "c#": "csharp",
    "jupyter notebook": "jupyter",
    "jupyter-notebook": "jupyter",
    "bash": "shell",
    "sh": "shell",
}


def language_from_path(path: str) -> str | None:
    """The language of ``path`` by its extension (case-insensitive), or None when unknown."""
    return EXTENSIONS.get(PurePosixPath(path).suffix.lower())


def normalize_language(name: str) -> str:
    """Our lowercase name for a language label from another dataset (``"C++"`` -> ``"cpp"``)."""
    low = name.strip().lower()
    return ALIASES.get(low, low)
