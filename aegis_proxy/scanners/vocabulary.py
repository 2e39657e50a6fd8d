"""What tool and argument names say: the word splitting and the verb vocabulary every scanner reads names with.

Scanners judge a string by where it sits: `send_email`'s `body` is a message, `write_file`'s `content` is a file,
`fetch_url`'s `url` is opened now. One splitter turns a tool name (`sendEmail`, `mcp__fs__write-file`) or the argument
a JSON path points at (`args.files[2].target_path`) into lower-case words, and the word sets below are the shared
meaning of those words. A scanner that needs a wider or narrower notion builds it from these sets in its own module,
so each word is defined once.
"""

from __future__ import annotations

import re
from functools import lru_cache

MAX_NAME_CHARS = 200  # words are read from this much of a name: tool names are short, anything longer is hostile

# Words: an all-caps run not followed by lower case (`HTTP` in `HTTPRequest`), a capitalised or lower-case run, or
# digits. Python's `re` is acceptable here: the input is at most MAX_NAME_CHARS characters and the pattern is flat.
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def name_words(name: str) -> frozenset[str]:
    """`browser_navigate` / `getWebPage` / `mcp__fs__write-file` / `HTTPRequest` -> lower-case words."""
    return _name_words(name[:MAX_NAME_CHARS])


@lru_cache(maxsize=4096)
def _name_words(name: str) -> frozenset[str]:
    # Cached: tool and argument names repeat from call to call.
    return frozenset(word.lower() for word in _WORD.findall(name))


@lru_cache(maxsize=4096)
def argument_key(path: str) -> str:
    """The name of the argument a JSON path points at (paths as `extract` writes them).

    `args.steps[2].command` -> `command`, `args["odd key"]` -> `odd key`, `args.files[0][1]` -> `files`,
    `args.headers{key}` -> `headers`, `args` -> `args`.
    """
    end = len(path)
    while end and path[end - 1] in "]}" and not path.endswith('"]', 0, end):  # array indices, a `{key}` marker
        opener = path.rfind("[" if path[end - 1] == "]" else "{", 0, end)
        if opener == -1:
            break
        end = opener
    if path.endswith('"]', 0, end):  # a quoted member: the key as written (JSON-escaped)
        start = path.rfind('["', 0, end)
        return path[start + 2 : end - 2] if start != -1 else ""
    return path[path.rfind(".", 0, end) + 1 : end]


@lru_cache(maxsize=4096)
def argument_words(path: str) -> frozenset[str]:
    """Words of the argument a JSON path points at: `args.files[2].target_path` -> {"target", "path"}."""
    return name_words(argument_key(path))


def _words(text: str) -> frozenset[str]:
    """A readable table: whitespace-separated words."""
    return frozenset(text.split())


# --- Tool-name verbs ------------------------------------------------------------------------------------------------

# Tools that put text into a file or document: what their arguments hold is written down, not run.
FILE_WRITE_VERBS = _words("write edit create save append replace insert patch")
# Editor tools whose names say "apply an edit" without a write verb: apply_patch, str_replace_editor, multiedit.
EDITOR_WORDS = _words("apply str multiedit")
# Tools that change, move or remove files and directories (the path scanner's writes besides FILE_WRITE_VERBS).
FILE_CHANGE_VERBS = _words("""
    delete remove move rename copy mkdir rm rmdir put update overwrite touch truncate unlink cp mv makedirs upsert
""")
# Tools whose arguments become a message someone reads: SQL or code in them is quoted, not run.
MESSAGE_VERBS = _words("send email mail message msg post chat reply comment issue slack discord tweet publish notify")
# Tools that send their payload to a destination named in another argument (email, chat, webhook, HTTP POST).
SEND_VERBS = _words("""
    send post upload email mail message webhook publish submit share notify tweet reply forward sms dm chat
""")
# Tools that open the URLs they are given. Not "request": pull_request, request_review.
FETCH_WORDS = _words("""
    fetch http https browse browser curl wget webpage navigate scrape crawl download visit goto url puppeteer playwright
    screenshot
""")
# Tools that run a command line in a shell.
SHELL_TOOL_WORDS = _words("shell bash sh zsh command terminal cmd powershell")
# Tools whose purpose is to run something: every string argument is a command unless its name says otherwise.
EXEC_TOOL_WORDS = SHELL_TOOL_WORDS | _words("exec execute console subprocess ssh process script")
