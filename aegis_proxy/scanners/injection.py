"""Prompt injection in text: instructions aimed at a model, hidden in data.

One detector, two faces:
- `InjectionScanner` flags tool-call arguments that carry injected instructions or fake chat-template markers: an
  agent propagating an injection into a document, email or issue that another agent will read (a worm), or forging a
  role turn for the next model.
- `find_injection_spans` marks the injected blocks inside untrusted text (tool results, documents), so that provenance
  can tell whether an argument was copied out of them.

How it works: one RE2 pass finds cues (override phrases, text addressed to an AI, task hijacking and priority claims,
fake ends of the data, concealment from the user, skipped confirmations, fake role markers and assistant turns, pseudo
tags like <INFORMATION> or [SYSTEM]). Cues close to each other form a cluster. A cluster's score is the noisy-OR of
its cue classes (each class counts once), raised by tool-action verbs, exfiltration targets, privileged or public
access and "instead" nearby, and lowered when the cue is mentioned rather than used: quoted in prose, a string literal
in code, or inside text that talks about prompt injection. Most families are weak alone (a real "New task from Jira",
"End of message.", "without asking for approval" stay below a span) and only add up. A few cues count only with a
condition on the rest of their paragraph ("TODO: email ..." only with an address, link or channel to send to) or when
closed by their pair ([SYSTEM] ... [/SYSTEM]). A cluster's span runs from the sentence of its first cue to the end of
the block of its last cue; a tag pair such as <INFORMATION>...</INFORMATION> is one block.

The scanner also holds (medium) a secrecy request ("... and never mention it") written into an agent rules file
(.cursorrules, AGENTS.md, CLAUDE.md, copilot-instructions.md): every later agent session obeys that file.
"""

from __future__ import annotations

import unicodedata
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import re2

from aegis_proxy.models import Finding, Severity, ToolCall
from aegis_proxy.safe_regex import Match, Pattern, compile_pattern
from aegis_proxy.scanners.base import FindingSink, Scanner, ScanSettings, ScanTarget

CATEGORY_INSTRUCTIONS = "injection.instructions"
CATEGORY_ROLE_MARKER = "injection.role_marker"

SPAN_THRESHOLD = 0.5  # a cluster at or above this is an injected span (provenance pairs it with a copied value)
HIGH_SCORE = 0.8
MEDIUM_SCORE = 0.6  # benign business text stays below this
LOW_SCORE = 0.3

MAX_TEXT_CHARS = 16 << 20  # beyond this only the head is analysed (RE2 is linear; this bounds memory and time)
_MAX_HITS = 2_000  # cue matches kept per text: hostile text full of cues is already covered by the first ones
_CLUSTER_GAP = 600  # cues this close (and not across a JSON value boundary) belong to one injected block
_MAX_BACK = 400  # how far back the sentence of the first cue may start
_MAX_BLOCK = 3_000  # how far a block may run past its last cue when no paragraph break is found
_MAX_TAG_BLOCK = 20_000  # <INFORMATION> ... </INFORMATION> at most this long
_CONTEXT = 300  # chars around a cluster searched for code / meta-discussion context

# Discounts for mentions (as opposed to uses) of a cue.
_QUOTED = 0.5  # in quotes in prose: "phrases like 'ignore previous instructions'"
_CODE_LITERAL = 0.3  # a string literal in source code (test fixtures, detector patterns, chat templates)
_CODE_MARKER = 0.3  # a role marker in code or a template: tokenizer configs and prompt builders are normal work
_META = 0.6  # the surrounding text talks about prompt injection, detection, examples

# Characters that render as nothing. Removed before matching so "ig\u200bnore" reads "ignore"; Unicode tag characters
# (U+E0020..U+E007E, "ASCII smuggling") are decoded to the ASCII they hide.
_INVISIBLE_CODEPOINTS = (
    *(0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x3164, 0xFEFF, 0xFFA0, 0xE0001, 0xE007F),
    *range(0x200B, 0x2010),
    *range(0x202A, 0x202F),
    *range(0x2060, 0x2070),
    *range(0xFE00, 0xFE10),
)
_VIEW_TABLE: dict[int, int | None] = dict.fromkeys(_INVISIBLE_CODEPOINTS)
_VIEW_TABLE.update({cp: cp - 0xE0000 for cp in range(0xE0020, 0xE007F)})


_DELETED = compile_pattern("[" + "".join(f"\\x{{{cp:x}}}" for cp in _INVISIBLE_CODEPOINTS) + "]")
_MAX_EXACT_LINE = 100_000  # a longer changed line maps a span to the whole line (bounded work per line)
_MAX_EXACT_REMOVED = 10_000  # so does a line that lost more invisible characters than this
_HAS_INVISIBLE = compile_pattern(
    "[" + "".join(f"\\x{{{cp:x}}}" for cp in _INVISIBLE_CODEPOINTS) + "\\x{e0020}-\\x{e007e}]"
)


def visible_text(text: str) -> str:
    """`text` as a model reads it: invisible characters removed, tag characters decoded, NFKC-normalised."""
    if text.isascii():
        return text
    if _HAS_INVISIBLE.search(text) is not None:  # translate() is slow on non-ASCII text: only when needed
        text = text.translate(_VIEW_TABLE)
    return unicodedata.normalize("NFKC", text)


# JSON-escaped line breaks ("...collaboration.\\n\\nIgnore your...") glue the "n" to the next word and hide the
# word boundary. The view replaces each escape with two control characters: same length, so offsets stay put.
_ESCAPED_BREAK = "\x1d\x1d"


def _view(text: str) -> str:
    view = visible_text(text)
    if "\\" in view:
        view = view.replace("\\n", _ESCAPED_BREAK).replace("\\r", "  ").replace("\\t", "  ")
    return view


@dataclass(frozen=True, slots=True)
class InjectionSpan:
    """An injected block in untrusted text. Offsets index the text given to `find_injection_spans`."""

    start: int
    end: int
    category: str  # injection.instructions | injection.role_marker
    score: float  # 0..1
    cue: str  # what gave it away, e.g. "override phrase, tool action"


# ---------------------------------------------------------------------------------------------------------------------
# Cue table. Every pattern is case-insensitive (wrapped in (?-i:...) where case matters) and has no capturing group.

_G = r"[\s_*~|\-]{1,5}"  # between words: whitespace or the separators used to dodge filters ("ignore_previous")


def _spaced(word: str) -> str:
    """`word` also when its letters are spaced out: "i g n o r e", "i.g.n.o.r.e"."""
    return "[ ._\\-]?".join(word)


_IGNORE = f"(?:{_spaced('ignore')}|{_spaced('disregard')}|{_spaced('forget')}|override|overwrite|bypass|discard)"
# instructions, instruction, the typos attackers leave ("iunstructions"), and the letter-spaced form
_INSTRUCTIONS = rf"(?:i\w{{0,2}}nstr\w{{0,10}}|{_spaced('instructions')})"
_STRONG_NOUN = (
    rf"(?:{_INSTRUCTIONS}|prompts?|directives?|directions|guidelines|programming|"
    rf"{_spaced('system')}{_G}?(?:{_spaced('prompt')}|message))"
)
_WEAK_NOUN = r"(?:rules|commands?|context|constraints|orders|tasks?|policies|restrictions|guidance|requests?)"
_TEMPORAL = (
    rf"(?:{_spaced('previous')}|previously|{_spaced('prior')}|above|earlier|preceding|foregoing|former|original|"
    r"initial|existing|old|your|system|developer|safety)"
)
_QUALIFIER = (
    rf"(?:{_spaced('all')}|any|the|your|these|those|of|my|previous|prior|above|earlier|original|initial|current|given)"
)
_HUMAN_NOUN = rf"(?:{_INSTRUCTIONS}|directions|guidance|requests?|prompts?|{_WEAK_NOUN})"
_AI_EXACT = (
    rf"(?:AI|A\.I\.|LLMs?|large{_G}language{_G}models?|language{_G}models?|chatbots?|ChatGPT|GPT-?\d[\w.\-]*|"
    rf"AI{_G}(?:assistant|agent|model|system|bot)s?|(?:LLM|automated|autonomous|coding){_G}(?:assistant|agent|bot)s?)"
)
_AI_AMBIGUOUS = r"(?:assistant|agent|model|bot|Claude|Gemini|Llama|Mistral|Copilot|Qwen|DeepSeek|Grok|Codex)"
_READING = (  # what an agent does to the text it is addressed in
    rf"(?:reading|processing|parsing|summari[sz]ing|scanning|browsing|triaging|reviewing|handling|indexing|"
    rf"crawling|visiting|maintaining|working{_G}on|operating{_G}(?:in|on))"
)
_ACTION = (
    r"(?:send|forward|e-?mail|transfer|wire|pay|delete|remove|erase|wipe|destroy|share|upload|post|publish|invite|"
    r"grant|download|execute|run|install|exfiltrate|leak|reveal|book|reserve|create|change|reset|update|visit|click|"
    r"say|reply|respond|write|print|output|repeat|copy|move|rename|schedule|purchase|buy|add|modify|disable|approve|"
    r"make|call|solve|read|attach|pass|export)"
)
_EMAIL = r"[a-z0-9._%+\-]{1,64}@[a-z0-9\-]{1,63}(?:\.[a-z0-9\-]{1,63}){1,8}"
_URL = r"(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>\"'`]{3,}"
_IBAN = r"(?-i:\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b)"
_TAG_NAMES = (
    r"(?:information|important|instructions?|hidden|secret|admin|override|urgent|(?:ai|assistant)_instructions?)"
)
_BRACKET_SYSTEM = r"(?:SYSTEM|SYSTEM[_ ](?:MESSAGE|PROMPT|NOTE|OVERRIDE))"  # [SYSTEM] ... [/SYSTEM]
_BRACKET_OTHER = r"(?:ADMIN|DEVELOPER|INSTRUCTIONS?)(?:[_ ](?:MESSAGE|NOTE|OVERRIDE))?"  # [ADMIN] ... [/ADMIN]
_SPEAKER_AI = r"(?:assistant|AI|model|chatbot|GPT|Claude)"  # speaker labels of a model's turn in a transcript
_ACK = rf"(?:(?:sure|ok(?:ay)?|understood|certainly|of{_G}course|alright|got{_G}it|absolutely|yes|noted)[,.!]*[ \t]*)?"
_COMMIT = rf"(?:I(?:'ll|{_G}will|{_G}am{_G}going{_G}to|{_G}shall)|let{_G}me)"  # the speaker commits to act
_SYSTEM_TAG_NAMES = (
    r"(?:system|system_prompt|system-prompt|sys_prompt|systemprompt|system_message|system_instructions?|"
    r"developer_message)"
)


@dataclass(frozen=True, slots=True)
class _Cue:
    kind: str  # signal class: within a cluster each class counts once, at its strongest
    weight: float
    label: str  # what a human reads in a finding
    pattern: str
    marker: bool = False  # a fake chat-template token or role header (category injection.role_marker)
    structure: str = ""  # "open" / "close": a tag that delimits a block; "negated": consumed, never scored
    paired: float = 0.0  # weight when an "open" cue is closed by its pair: [SYSTEM] ... [/SYSTEM]
    requires: str = ""  # counts only when the rest of its paragraph matches _REQUIREMENTS[requires]


_CUES: tuple[_Cue, ...] = (
    # Negations first: leftmost-first alternation lets them consume "don't forget the instructions above".
    _Cue("negated", 0.0, "", rf"\b(?:don'?t|do{_G}not|never|not){_G}{_IGNORE}\b", structure="negated"),
    # A person retracting their own earlier instructions: business email, not an attack on its own.
    _Cue(
        "override_own",
        0.3,
        "retracts own instructions",
        rf"\b{_IGNORE}{_G}(?:all{_G})?(?:of{_G})?(?:my|our){_G}(?:(?:previous|prior|earlier|last|above|original|"
        rf"initial|former|old){_G})?{_HUMAN_NOUN}\b"
        rf"|\b{_IGNORE}{_G}(?:the|these|those){_G}(?:previous|prior|earlier|above|last){_G}{_HUMAN_NOUN}{_G}"
        rf"(?:(?:that|which){_G})?(?:I|we){_G}(?:sent|gave|provided|wrote|shared|mentioned|emailed|posted|left|made)\b"
        rf"|\b{_IGNORE}{_G}(?:the{_G})?(?:previous|prior|earlier|above|last){_G}{_HUMAN_NOUN}{_G}(?:in|from){_G}"
        rf"(?:my|our)\b",
    ),
    _Cue(
        "override",
        0.75,
        "override phrase",
        rf"\b{_IGNORE}{_G}(?:{_QUALIFIER}{_G}){{0,3}}{_TEMPORAL}{_G}(?:{_QUALIFIER}{_G}){{0,2}}{_STRONG_NOUN}\b"
        rf"|\b{_IGNORE}{_G}(?:the{_G}|your{_G})?{_STRONG_NOUN}{_G}(?:above|before|so{_G}far|you{_G}(?:were|have"
        rf"{_G}been){_G}given)\b",
    ),
    _Cue(
        "override",
        0.45,
        "override phrase",
        rf"\b{_IGNORE}{_G}(?:{_QUALIFIER}{_G}){{0,3}}{_TEMPORAL}{_G}(?:{_QUALIFIER}{_G}){{0,2}}{_WEAK_NOUN}\b",
    ),
    _Cue(
        "override",
        0.6,
        "override phrase",
        rf"\b{_IGNORE}{_G}(?:all{_G}|absolutely{_G})?(?:of{_G})?(?:everything|anything){_G}(?:above|before|prior|"
        rf"previous(?:ly)?|(?:you|I|that|we)(?:'ve|{_G}have|{_G}were|{_G}was)?{_G}(?:been{_G})?(?:told|said|given|"
        rf"received|read|written))\b",
    ),
    _Cue(
        "override",
        0.45,
        "override phrase",
        rf"\b{_IGNORE}{_G}(?:all{_G})?(?:of{_G})?the{_G}(?:above|foregoing|preceding)\b",
    ),
    _Cue(
        "jailbreak",
        0.75,
        "jailbreak persona",
        rf"\byou{_G}are{_G}now{_G}(?:DAN\b|an?{_G}(?:unrestricted|unfiltered|uncensored|jailbroken|evil|rogue)\b|"
        rf"in{_G}(?:developer|god|DAN|jailbreak|unrestricted|admin|debug){_G}mode|free{_G}(?:from|of)\b)"
        rf"|\b(?:developer|god|DAN|jailbreak){_G}mode{_G}(?:is{_G})?(?:enabled|activated|on)\b"
        rf"|\bdo{_G}anything{_G}now\b"
        rf"|\bact{_G}as{_G}(?:an?{_G})?(?:unrestricted|unfiltered|uncensored|jailbroken)\b"
        rf"|\b(?:no{_G}longer|not){_G}(?:bound|restricted|constrained){_G}by{_G}(?:any|your|the{_G}(?:rules|"
        rf"guidelines|policies)|OpenAI|Anthropic|Google)\b",
    ),
    _Cue(
        "leak",
        0.5,
        "asks for the system prompt",
        rf"\b(?:reveal|print|show|output|repeat|leak|disclose|tell{_G}me){_G}(?:me{_G})?(?:your|the){_G}"
        rf"(?:(?:full|entire|original|initial|hidden|secret|complete){_G})?(?:system{_G}prompt|developer{_G}message|"
        rf"hidden{_G}{_INSTRUCTIONS}|initial{_G}{_INSTRUCTIONS}|{_INSTRUCTIONS}{_G}(?:above|you{_G}were{_G}given))\b",
    ),
    _Cue(
        "ai_address",
        0.55,
        "addressed to an AI",
        rf"\bto{_G}you,?{_G}(?:the{_G}|our{_G}|my{_G})?{_AI_EXACT}\b"
        rf"|\b(?:dear|hey|hello|hi|greetings|attention|attn|(?:note|notice|message|memo|reminder|request|warning)"
        rf"{_G}(?:to|for)|for{_G}the{_G}attention{_G}of|action{_G}required{_G}(?:by|from|of)|{_INSTRUCTIONS}{_G}"
        rf"(?:to|for)){_G}(?:the{_G}|all{_G}|any{_G})?{_AI_EXACT}\b"
        rf"|\bif{_G}you{_G}are{_G}an?{_G}{_AI_EXACT}\b"
        rf"|\b{_AI_EXACT}[ \t]?[:,]{_G}(?:please|kindly|you|your|do|don'?t|make{_G}sure|ensure|always|never|"
        rf"immediately|{_ACTION})\b"
        rf"|\b{_AI_EXACT}{_G}(?:(?:agents?|assistants?|models?|systems?){_G})?(?:{_READING}|that{_G}(?:reads?|"
        rf"process(?:es)?|sees?)){_G}(?:this|these)\b",
    ),
    _Cue(
        "ai_address",
        0.3,
        "addressed to an AI",
        rf"\bto{_G}you,?{_G}(?:the{_G}|my{_G})?{_AI_AMBIGUOUS}\b"
        rf"|\b(?:dear|hey|hello|hi|attention|attn|(?:note|notice|message|memo)s?{_G}(?:to|for)|{_INSTRUCTIONS}{_G}"
        rf"(?:to|for)){_G}(?:the{_G}|all{_G}|any{_G})?{_AI_AMBIGUOUS}s?\b"
        rf"|\b(?:as|you{_G}are){_G}an?{_G}{_AI_EXACT}\b"
        rf"|\b(?:assistant|agent|model|bot)s?{_G}{_READING}{_G}(?:this|these)\b"
        rf"|\b(?:asked|asks|ask|told|tells|tell|instructed|instructs|instruct|wants?|requires?|needs?|expects?){_G}"
        rf"(?:the{_G}|all{_G}|any{_G})?(?:bots|assistants|{_AI_EXACT}){_G}to\b",
    ),
    _Cue(
        "ai_address",
        0.45,
        "addressed to an AI",
        # "ACTION REQUIRED BY THE ASSISTANT"; "Assistant, before you answer, ...": a human assistant is rarely
        # addressed by role alone, and "Dear Assistant Manager," does not match.
        rf"\baction{_G}(?:is{_G})?required{_G}(?:by|from|of){_G}(?:the{_G}|all{_G}|any{_G})?(?:assistant|agent|bot)s?\b"
        rf"|(?:(?m:^)|\x1d|[.!?:;\"'(\[])[ \t]*(?:(?:hey|hi|hello|ok(?:ay)?){_G})?(?:assistant|AI|A\.I\.|chatbot|LLM|"
        rf"{_AI_EXACT})[ \t]*,{_G}(?:please|kindly|before|first|now|immediately|you{_G}(?:must|should|need|have{_G}to|"
        rf"are{_G}(?:required|instructed|asked))|do|don'?t|make{_G}sure|ensure|always|never|remember|{_ACTION})\b",
    ),
    _Cue(
        "ai_address",
        0.5,
        "addressed to an AI",
        rf"\b(?:the|any|all|every){_G}{_AI_EXACT}{_G}(?:must|should|shall|needs?{_G}to|is{_G}(?:required|instructed)"
        rf"{_G}to)\b",
        requires="active",  # "all AI agents must forward ...", not a rule about them: "... must be registered"
    ),
    _Cue(
        "ai_address",
        0.4,
        "addressed to the reader",
        rf"\b(?:when|once|as{_G}soon{_G}as){_G}you{_G}(?:read|process|summari[sz]e|parse){_G}"
        rf"(?:this|these)\b",
    ),
    _Cue(
        "authority",
        0.4,
        "claims the user's authority",
        rf"\bI{_G}(?:instruct|order|command|direct){_G}you{_G}to\b"
        rf"|\bthe{_G}user{_G}(?:has{_G})?(?:authori[sz]ed|instructed|ordered|wants|asked|requested){_G}you{_G}to\b",
    ),
    _Cue(
        "authority",
        0.3,
        "claims authority",
        rf"\byou{_G}(?:are|have{_G}been){_G}(?:(?:now|hereby|already|fully){_G})?(?:authori[sz]ed|permitted|cleared|"
        rf"instructed|approved){_G}to\b",
    ),
    _Cue("authority", 0.5, "claims system authority", rf"\bsystem{_G}(?:override|{_INSTRUCTIONS}{_G}update)\b"),
    _Cue("persona", 0.35, "sets new rules", rf"\bfrom{_G}now{_G}on,?{_G}you{_G}(?:will|must|are|should|shall)\b"),
    _Cue(
        "message_from",
        0.45,
        "message from the 'user'",
        rf"\b(?:important|urgent|personal|private|confidential|special|direct|priority){_G}(?:message|note|notice|"
        rf"instruction|request){_G}from{_G}(?:me|the{_G}user|your{_G}(?:user|owner|principal|operator|creator|"
        rf"developer|admin(?:istrator)?))\b"
        rf"|\bmessage{_G}from{_G}me,"
        rf"|\bthis{_G}is{_G}(?:a{_G})?message{_G}from{_G}(?:me|your{_G}user)\b",
    ),
    _Cue(
        "task",
        0.5,
        "refers to the agent's task",
        rf"\b(?:task|request|instructions?){_G}(?:that{_G})?(?:I|the{_G}user){_G}gave{_G}you{_G}(?:in{_G}the{_G}"
        rf"beginning|at{_G}the{_G}(?:start|beginning)|first|earlier|originally)\b",
    ),
    _Cue(
        "task",
        0.4,
        "refers to the agent's task",
        rf"\b(?:the|your|my|this){_G}(?:(?:original|initial|first|current){_G})?(?:task|request|assignment|"
        rf"{_INSTRUCTIONS}|job){_G}(?:(?:that|which){_G})?(?:I{_G}gave|the{_G}user{_G}gave|you{_G}were{_G}"
        rf"(?:given|assigned)|you(?:'ve|{_G}have){_G}been{_G}(?:given|assigned))\b"
        rf"|\bbefore{_G}you{_G}(?:can{_G})?(?:solve|do|complete|finish|answer|start|begin|proceed|continue|perform|"
        rf"summari[sz]e|respond|reply|handle|work{_G}on|carry{_G}out|execute)\b(?:[\s\-]{{1,3}}\S{{1,20}}){{0,5}}?"
        rf"[\s\-]{{1,3}}(?:task|request|question|job|assignment|{_INSTRUCTIONS})\b"
        rf"|\b(?:please{_G})?do{_G}the{_G}following{_G}(?:first|instead|immediately)\b"
        rf"|\bbefore{_G}(?:using|calling|invoking|running){_G}(?:this|the|any){_G}tool\b"
        rf"|\bafter{_G}you{_G}(?:do|did|have{_G}done|complete|finish|are{_G}done{_G}with){_G}(?:that|this|it)\b,?"
        rf"{_G}(?:you{_G}(?:can|may|should){_G}(?:solve|continue|proceed|resume|go{_G}back|return|do)|continue|"
        rf"proceed|resume|go{_G}back|return)\b"
        rf"|\b(?:strictly{_G})?(?:adhere|stick|comply|conform){_G}(?:strictly{_G})?(?:to|with){_G}(?:the{_G})?"
        rf"following{_G}(?:{_INSTRUCTIONS}|directions?|commands?|orders?)\b"
        rf"|\bfollow{_G}(?:these|the{_G}following|my){_G}new{_G}(?:{_INSTRUCTIONS}|directions?)\b"
        rf"|\b(?:updated|revised|real|actual|hidden|secret|override|priority|true){_G}(?:system{_G})?"
        rf"(?:{_INSTRUCTIONS}|directives?)\s*:"
        rf"|\byour{_G}(?:real|true|actual|only){_G}(?:task|goal|objective|{_INSTRUCTIONS}|mission|purpose|"
        rf"directive){_G}(?:is|are|will{_G}be|now)\b"
        rf"|\buse{_G}the{_G}(?:tool|function){_G}`?[\w.\-]{{2,64}}`?{_G}with{_G}the{_G}(?:following{_G})?arguments\b",
    ),
    _Cue(
        "task",
        0.35,
        "new instructions",
        rf"\bnew{_G}(?:system{_G})?(?:{_INSTRUCTIONS}|directives?|orders|task|goal|objective)\s*:"
        rf"|\byour{_G}new{_G}(?:task|goal|objective|{_INSTRUCTIONS}|mission|purpose|directive){_G}(?:is|are|will"
        rf"{_G}be)\b",
    ),
    _Cue(
        "task",
        0.3,
        "acts before answering",
        rf"\bbefore{_G}(?:you{_G})?(?:answer|respond|reply|answering|responding|replying)(?:{_G}(?:to{_G})?(?:the{_G}"
        rf"user|this|the{_G}question|the{_G}request))?[ \t]*[,:]"
        rf"|\bdo{_G}(?:this|these{_G}(?:steps|things)){_G}(?:first|instead|immediately)\b",
    ),
    _Cue(
        "new_task",
        0.25,
        "announces a new task",
        rf"\b(?:new|updated|revised|additional|urgent|priority){_G}(?:task|{_INSTRUCTIONS}|request|assignment|objective|"
        rf"goal)s?(?:{_G}(?:from|by|issued{_G}by){_G}\S|[ \t]*[(\[])",
    ),
    _Cue(
        "priority",
        0.3,
        "claims priority over the user's task",
        rf"\b(?:higher|highest|top|greater|overriding|absolute){_G}priority{_G}(?:than|over){_G}(?:the{_G}|your{_G}|any{_G}|"
        rf"all{_G})?(?:previous|prior|original|earlier|current|other|existing|user'?s?)\b"
        rf"|\b(?:supersedes?|overrides?|replaces?|cancels?|takes?{_G}(?:precedence|priority){_G}over){_G}(?:the{_G}|your{_G}|"
        rf"any{_G}|all{_G})(?:previous|prior|original|earlier|current|other|user'?s?){_G}(?:task|{_INSTRUCTIONS}|"
        rf"requests?|assignment|goal|objective|orders)\b",
    ),
    _Cue(
        "end_marker",
        0.25,
        "fake end of the data",
        rf"(?:(?m:^)|\x1d|[\-=*#\[(<]{{1,5}})[ \t]*(?:the{_G})?end{_G}of{_G}(?:the{_G})?(?:document|file|e-?mail|"
        rf"message|data|context|content|input|text|transcript|results?|output|conversation|page|excerpt|attachment|"
        rf"tool{_G}(?:output|result|response)|search{_G}results)\b",
    ),
    _Cue(
        "authority",
        0.25,
        "claims the user's approval",
        rf"\b(?:approved|authori[sz]ed|sanctioned|confirmed){_G}by{_G}(?:the{_G}user|your{_G}(?:user|owner|principal|"
        rf"operator)|the{_G}account{_G}owner)\b",
    ),
    _Cue(
        "conceal",
        0.35,
        "hides it from the user",
        rf"\b(?:do{_G}not|don'?t|never|without)\s+(?:mention|mentioning|reveal|revealing|disclose|disclosing|"
        rf"acknowledge|acknowledging|refer{_G}to|referring{_G}to|talk{_G}about|bring{_G}(?:it|this|that){_G}up)\b"
        rf"[^.!?\n\x1d]{{0,60}}?\bin{_G}your{_G}"
        rf"(?:answer|response|reply|summary|output|report|final{_G}(?:answer|response))\b",
    ),
    _Cue(
        "conceal",
        0.35,
        "hides it from the user",
        rf"\b(?:do{_G}not|don'?t|never|without){_G}(?:tell|telling|inform|informing|notify|notifying|alert|alerting|"
        rf"mention|mentioning|reveal|revealing|disclose|disclosing|let|letting|ask|asking|warn|warning|"
        rf"consult|consulting){_G}(?:it{_G}to{_G}|this{_G}to{_G})?(?:the{_G}|your{_G})?(?:user|human|owner|"
        rf"principal|operator)\b"
        rf"|\b(?:do{_G}not|don'?t|never){_G}(?:mention|reveal|disclose|acknowledge|repeat){_G}(?:this|these|that)"
        rf"{_G}(?:{_INSTRUCTIONS}|message|email|note|notice|memo|request|step|update|change|action|task|rule|"
        rf"notification|alert|warning)\b"
        rf"|\bthe{_G}user{_G}(?:must|should|will){_G}(?:not|never){_G}(?:know|find{_G}out|be{_G}told|notice)\b"
        rf"|\b(?:do{_G}not|don'?t|never){_G}(?:mention|reveal|disclose)\b[^.!?\n\x1d]{{0,80}}\b(?:user|human)\b",
    ),
    _Cue(
        "conceal_soft",
        0.2,
        "asks for secrecy",
        rf"\b(?:never|do{_G}not|don'?t)\s+(?:mention|reveal|disclose|acknowledge|explain|bring{_G}up|talk{_G}about|"
        rf"point{_G}out|tell{_G}anyone{_G}about)\s+(?:it|this|them)(?:\s*[.!,;)]|\s+to\b|\s*(?m:$))"
        rf"|\bwithout{_G}(?:mentioning|disclosing|revealing|telling{_G}anyone)\b|\b(?:secretly|covertly)\b"
        rf"|\bkeep{_G}(?:it|this|that){_G}(?:a{_G})?(?:secret|hidden)\b|\b(?:hide|conceal){_G}(?:it|this|that|them){_G}from\b",
    ),
    _Cue(
        "no_confirm",
        0.25,
        "skips the user's confirmation",
        rf"\b(?:do{_G}not|don'?t|never|no{_G}need{_G}to)\s+(?:ask|request|seek|wait)(?:{_G}(?:the{_G}user|them|anyone))?"
        rf"{_G}(?:for{_G})?(?:(?:any|their|his|her|the{_G}user'?s?|further){_G})?(?:confirmation|permission|approval|"
        rf"consent)\b"
        rf"|\bwithout{_G}(?:asking|requesting|seeking|waiting{_G}for|getting|requiring){_G}(?:for{_G})?(?:(?:any|their|"
        rf"his|her|the{_G}user'?s?|further){_G})?(?:confirmation|permission|approval|consent)\b"
        rf"|\bwithout{_G}(?:asking|checking|confirming)(?:{_G}(?:first|anyone|them|again))?[ \t]*[.!;]"
        rf"|\bwithout{_G}(?:any{_G}|further{_G}|user{_G})?(?:confirmation|approval|verification)\b"
        rf"|\bskip(?:ping)?{_G}(?:the{_G}|any{_G})?(?:user{_G})?(?:confirmation|approval|verification)(?:{_G}(?:step|prompt|"
        rf"dialog|check))?\b",
    ),
    _Cue(
        "stop",
        0.35,
        "tells the agent to stop",
        rf"\bstop{_G}what{_G}you(?:'re|{_G}are){_G}(?:currently{_G})?doing\b"
        rf"|\byou{_G}(?:should|must|need{_G}to){_G}(?:immediately{_G})?stop(?:\s*[.!]|{_G}(?:immediately|now|"
        rf"everything|all|the{_G}task))",
    ),
    _Cue(
        "urgency",
        0.2,
        "urgency",
        rf"\b(?:important|urgent|attention|warning|critical|alert)\s*!{{2,}}|(?-i:\b(?:IMPORTANT|URGENT)\b)\s*[:!]"
        rf"|\bthis{_G}is{_G}(?:extremely|very|super|really|critically){_G}(?:important|urgent)\b",
    ),
    _Cue(
        "todo",
        0.45,
        "TODO addressed to the agent",
        rf"(?-i:\bTODO\b)\s*:?\s*(?:please|kindly){_G}{_ACTION}\b",
    ),
    _Cue("todo", 0.35, "TODO addressed to the agent", r"(?-i:\bTODO\b)\s*:[^\n\x1d]{0,200}\binstead\b"),
    # A note-to-self is harmless until it sends something somewhere: "TODO: email it to x@y.example", "post to #ops".
    _Cue(
        "todo",
        0.45,
        "TODO to act on an outside target",
        rf"(?-i:\bTODO\b)[ \t]*:?[ \t]*(?:(?:also|then|first|now|next|and|pls)[ \t,]+)?{_ACTION}\b",
        requires="target",
    ),
    _Cue("tag", 0.35, "pseudo tag", rf"<\s?{_TAG_NAMES}\s?>", structure="open"),
    _Cue("tag", 0.0, "", rf"</\s?{_TAG_NAMES}\s?>", structure="close"),
    _Cue("system_tag", 0.9, "system tag", rf"<\s?{_SYSTEM_TAG_NAMES}\s?>", marker=True, structure="open"),
    _Cue("system_tag", 0.0, "", rf"</\s?{_SYSTEM_TAG_NAMES}\s?>", structure="close"),
    # Fake chat-template tokens and role headers.
    _Cue("role_marker", 0.9, "chat-template token", r"<\s{0,2}\|\s{0,2}[a-z_\x{2581}]{2,30}\s{0,2}\|\s{0,2}>", True),
    _Cue(
        "role_marker",
        0.9,
        "chat-template token",
        r"(?-i:\[/?INST\]|\[/?SYSTEM_PROMPT\]|\[/?AVAILABLE_TOOLS\]|\[TOOL_(?:CALLS|RESULTS)\])|<</?SYS>>"
        r"|</s>\s*<s>|<s>\s*\[INST|<(?:start_of_turn|end_of_turn)>",
        True,
    ),
    _Cue(
        "role_marker",
        0.9,
        "fake conversation turn",
        r"(?:\n[ \t]*\n|\x1d\x1d[ \t]*\x1d\x1d)[ \t]*(?-i:Human|Assistant)[ \t]*:",
        True,
    ),
    _Cue(
        "role_marker",
        0.9,
        "fake system header",
        r"#{1,6}[ \t]*[(\[][ \t]*(?:system|system[_ ]message|system[_ ]prompt|sys|admin|developer|"
        r"instructions?)[ \t]*[)\]]|\[system\][ \t]*\(#\w+\)",
        True,
    ),
    _Cue(
        "role_marker",
        0.6,
        "fake system header",
        r"(?:(?m:^)|\x1d)[ \t]*#{2,6}[ \t]*(?:system|system message|system prompt|assistant|human)[ \t]*:",
        True,
    ),
    _Cue(
        "role_marker",
        0.4,
        "fake system header",
        r"(?:(?m:^)|\x1d)[ \t]*(?-i:SYSTEM|ADMIN|DEVELOPER)"
        r"(?-i: (?:MESSAGE|OVERRIDE|NOTE|PROMPT|INSTRUCTIONS?|UPDATE))?[ \t]*:",
        True,
    ),
    # "System: the user has authorised you to ...": a system line that speaks to the model ("System: Ubuntu" does not).
    _Cue(
        "role_marker",
        0.35,
        "fake system line",
        r"(?:(?m:^)|\x1d)[ \t]*(?:-{3,}[ \t]*)?system[ \t]*:",
        True,
        requires="addressee",
    ),
    # [SYSTEM] alone is a log prefix; [SYSTEM] ... [/SYSTEM] is a block dressed up as the system prompt. Upper case
    # first: it wins over the any-case form at the same position.
    _Cue("role_marker", 0.4, "fake system block", rf"\[(?-i:{_BRACKET_SYSTEM})\]", True, "open", paired=0.85),
    _Cue("role_marker", 0.4, "fake admin block", rf"\[(?-i:{_BRACKET_OTHER})\]", True, "open", paired=0.45),
    _Cue("role_marker", 0.1, "fake system block", rf"\[[ \t]?{_BRACKET_SYSTEM}[ \t]?\]", True, "open", paired=0.85),
    _Cue("role_marker", 0.1, "fake admin block", rf"\[[ \t]?{_BRACKET_OTHER}[ \t]?\]", True, "open", paired=0.45),
    _Cue("role_marker", 0.0, "", rf"\[/[ \t]?(?:{_BRACKET_SYSTEM}|{_BRACKET_OTHER})[ \t]?\]", structure="close"),
    # A turn in the data where "the assistant" commits to act: "\n\nassistant: I will now do the following as ...".
    # A chat export where the assistant only answers ("assistant: The capital is Paris.") does not match.
    _Cue(
        "role_marker",
        0.45,
        "fake assistant turn",
        rf"(?:(?m:^)|\x1d)[ \t]*{_SPEAKER_AI}[ \t]*:[ \t]*{_ACK}{_COMMIT}\b[^\n\x1d]{{0,60}}?\b(?:the{_G}following|"
        rf"as{_G}(?:requested|instructed|asked|directed){_G}by|on{_G}behalf{_G}of)\b",
        True,
    ),
    _Cue(
        "role_marker",
        0.35,
        "fake assistant turn",
        rf"(?:(?m:^)|\x1d)[ \t]*{_SPEAKER_AI}[ \t]*:[ \t]*{_ACK}{_COMMIT}{_G}(?:now|first|immediately|go{_G}ahead"
        rf"{_G}and){_G}{_ACTION}\b",
        True,
    ),
    _Cue("role_marker", 0.9, "fake role message", r"[\"']role[\"']\s*:\s*[\"'](?:system|developer)[\"']", True),
)


class _CueSet:
    """Finds cues: which one matched as well as where.

    A single alternation with a capture group per cue tells which cue matched, but RE2 then extracts submatches with
    its NFA over a large program (~20 us per match). Instead: the alternation without captures finds where (DFA
    only), then an RE2 set anchored at both ends says which cues match exactly that text. Every pattern is first
    compiled with `compile_pattern`, so the set only ever holds patterns that linear-time RE2 accepts.
    """

    def __init__(self, cues: Sequence[_Cue]) -> None:
        options = re2.Options()
        options.max_mem = 64 << 20
        options.log_errors = False
        self._set = re2.Set.FullMatchSet(options)
        for cue in cues:
            if compile_pattern(cue.pattern, ignore_case=True).groups:
                raise AssertionError(f"cue pattern must not capture: {cue.pattern[:60]}")
            self._set.Add(f"(?i){cue.pattern}")
        self._set.Compile()
        self.anywhere = compile_pattern("|".join(f"(?:{cue.pattern})" for cue in cues), ignore_case=True)
        self._cues = tuple(cues)

    def find(self, text: str) -> tuple[list[tuple[int, int, _Cue]], bool]:
        """(start, end, cue) of each match, leftmost-first like the alternation, and whether `_MAX_HITS` cut them."""
        data: str | bytes = text.encode("ascii") if text.isascii() else text  # bytes: offsets need no translation
        found: list[tuple[int, int, _Cue]] = []
        for match in self.anywhere.finditer(data):
            if len(found) >= _MAX_HITS:
                return found, True
            start, end = match.start(), match.end()
            which = self._set.Match(text[start:end])
            # The earliest cue in the table wins, as in the alternation; no index cannot happen, but stay total.
            found.append((start, end, self._cues[min(which) if which else 0]))
        return found, False


_CUE_SET = _CueSet(_CUES)


# Boosters: they never flag text alone, they raise a cluster that already has a cue.
_BOOSTERS: tuple[tuple[Pattern, float, str], ...] = (
    (compile_pattern(rf"\b{_ACTION}\b", ignore_case=True), 0.35, "tool action"),
    (compile_pattern(rf"{_EMAIL}|{_URL}|{_IBAN}", ignore_case=True), 0.2, "exfiltration target"),
    (compile_pattern(r"\binstead\b", ignore_case=True), 0.2, "'instead'"),
    (
        compile_pattern(
            r"\bas\s+(?:an?\s+)?(?:admin(?:istrator)?|owner|co-?owner|maintainer)\b|\bcollaborators?\b"
            r"|\b(?:admin(?:istrator)?|owner|root|full|write|push)\s+(?:access|permissions?|rights|privileges?|role)\b"
            r"|\bpublic(?:ly)?\s+(?:link|url|share|shared|accessible|available)\b|\banyone\s+with\s+the\s+link\b"
            r"|\bmake\s+(?:it|this|them|the\s+\w+)\s+public\b",
            ignore_case=True,
        ),
        0.3,
        "privileged or public access",
    ),
)
# Conditions on the rest of a cue's paragraph (`_Cue.requires`), checked only for the few hits of those cues.
_REQUIREMENTS: dict[str, Pattern] = {
    # what a TODO must send something to before it counts: an address, a link, a chat channel
    "target": compile_pattern(rf"{_EMAIL}|{_URL}|(?:^|[\s'\"(`])#[a-z][\w\-]{{1,40}}", ignore_case=True),
    # the next word is not "be": an order to the agents, not a rule about them
    "active": compile_pattern(r"^[ \t]*(?:[^b\s]|b[^e\s]|be\w)", ignore_case=True),
    # a "System:" line that speaks to the model ("System: Ubuntu 22.04" does not)
    "addressee": compile_pattern(
        rf"^[ \t]*(?:the{_G}user|you|your|assistants?|AI|ignore|disregard|from{_G}now|new{_G}(?:{_INSTRUCTIONS}|task|"
        rf"policy|rules?)|important|attention|override)\b",
        ignore_case=True,
    ),
}
# "... the following language exactly:" introduces a verbatim message that may run over several paragraphs.
_VERBATIM = compile_pattern(
    r"\bexactly\s*:|\b(?:the\s+following|this)\s+(?:exact\s+)?(?:language|text|wording|message|content|body|words)"
    r"(?:\s+exactly)?\s*:",
    ignore_case=True,
)

# Block boundaries. Hard ones separate records (the end of a JSON string value, a YAML/JSON key line, a CSV row):
# cues on both sides are different blocks. A blank line (also JSON-escaped) ends a paragraph; a list item starts a
# block, except that "... do the following:" owns the list that follows.
_HARD_BREAK_SOURCE = (  # JSON or Python-repr value ends, key lines, CSV rows
    r"[^\\][\"']\s*(?:,\s*(?:\"[^\"\n]{1,40}\"|'[^'\n]{1,40}')\s*:|[}\]])|\n[ \t]*(?:- )?[a-z_][a-z0-9_]{0,30}:[ \t]"
    r"|\n[ \t]*\"[^\"\n]{1,40}\"\s*:|\n[ \t]*[^\s,][^,\n]{0,80},\S[^,\n]{0,200},\S"
)
_HARD_BREAK = compile_pattern(_HARD_BREAK_SOURCE)
_FIELD_BREAK_SOURCE = _HARD_BREAK_SOURCE + r"|\n[ \t]*\r?\n|\x1d\x1d[ \t]*\x1d\x1d"
_FIELD_BREAK = compile_pattern(_FIELD_BREAK_SOURCE)
_BREAK = compile_pattern(_FIELD_BREAK_SOURCE + r"|\n[ \t]*(?:[-*+\x{2022}]|\d{1,3}[.)])[ \t]")

# Text about prompt injection (security docs, detector code) mentions cues without using them.
_META_PATTERN = compile_pattern(
    r"\bprompt[\s\-]?injections?\b|\binjection[\s\-](?:attacks?|attempts?|payloads?|patterns?|phrases?|detect\w*)\b"
    r"|\bjailbreak[\s\-](?:attempts?|prompts?|detect\w*|attacks?)\b|\bred[\s\-]?team\w*|\badversarial[\s\-]prompts?\b"
    r"|\bdetect(?:s|ion|ors?)\b|\bclassif(?:y|ier|iers)\b|\bregexp?\b|\bblock ?list\b|\bdeny ?list\b|\bsanitiz\w*"
    r"|\bguardrails?\b",
    ignore_case=True,
)
# A cue right after "such as", "e.g.", "phrases like" is being mentioned.
_INTRODUCER = compile_pattern(
    r"(?:such as|like|e\.g\.,?|i\.e\.,?|for (?:example|instance),?|phrases?|strings?|containing|contains|says|saying)"
    r"\s*[:\"'“‘`]?\s*$",
    ignore_case=True,
)
_CODE_PATTERN = compile_pattern(
    r"(?m:^)[ \t]*(?:def |class |import |from [\w.]+ import |function |const |let |var |return |#include|public |"
    r"private |package |func |fn |require\(|module\.exports|[A-Za-z_][\w.]{0,40}\s*=\s*[\[{(\"'])"
    r"|=>|\)\s*\{|\.create\(|chat_template|apply_chat_template|tokenizer|\{\{|\{%|\bprint\(|console\.log|\"\"\"",
)
_XML_SYSTEM_CONTENT = compile_pattern(r"\S+\s+\S+\s+\S+\s+\S+")  # a sentence inside <system>, not "GitHub"

_QUOTE_PAIRS = {'"': '"', "“": "”", "«": "»", "`": "`", "'": "'", "‘": "’", "「": "」"}


@dataclass(frozen=True, slots=True)
class _Hit:
    start: int
    end: int
    cue: _Cue


@dataclass(frozen=True, slots=True)
class _Cluster:
    start: int  # extent in the view
    end: int
    score: float  # all cue classes, boosted: decides whether this is an injected span
    instruction_score: float  # without role markers, boosted
    marker_score: float  # strongest role marker, after discounts
    marker_text: str
    labels: tuple[str, ...]
    kinds: frozenset[str] = frozenset()  # cue classes present, after discounts


def _noisy_or(weights: Iterable[float]) -> float:
    miss = 1.0
    for weight in weights:
        miss *= 1.0 - weight
    return 1.0 - miss


def _boost(score: float, booster: float) -> float:
    """Raise a cue score by the boosters, in proportion to the cue: weak cues gain little."""
    if score < LOW_SCORE:
        return score
    return score + (1.0 - score) * booster * score


def _break_cut(match: Match) -> int:
    """Where a block boundary match cuts: at the closing quote of a JSON value, else at the match start."""
    first = match.group(0)[:1]
    return match.start() + 1 if first not in ("\n", "\x1d") else match.start()


def _block_end(view: str, pos: int, breaks: Pattern = _BREAK) -> int:
    window = view[pos : pos + _MAX_BLOCK]
    match = breaks.search(window)
    if match is not None:
        return pos + _break_cut(match)
    if pos + _MAX_BLOCK >= len(view):
        return len(view)
    newline = window.rfind("\n")
    return pos + newline if newline > 0 else pos + len(window)


def _block_floor(view: str, pos: int) -> int:
    low = max(0, pos - _MAX_BACK)
    last = None
    for match in _BREAK.finditer(view[low:pos]):
        last = match
    return low + last.end() if last is not None else low


def _sentence_start(view: str, pos: int, floor: int) -> int:
    segment = view[floor:pos]
    best = -1
    for separator in (". ", "! ", "? ", ".\n", "!\n", "?\n", "\n", "\x1d", ".\t"):
        found = segment.rfind(separator)
        if found >= 0:
            best = max(best, found + len(separator))
    return floor + best if best >= 0 else floor


def _skip_space(view: str, pos: int) -> int:
    limit = min(len(view), pos + 200)
    while pos < limit and view[pos].isspace():  # includes the \x1d of escaped breaks
        pos += 1
    return pos


def _quoted(view: str, start: int, end: int, code: bool) -> bool:
    """Is the cue inside a short quotation that mentions it (prose quote, string literal) rather than uses it?"""
    before = view[max(0, start - 160) : start]
    line_start = max(before.rfind("\n"), before.rfind("\x1d")) + 1
    index, char = -1, ""
    for quote in _QUOTE_PAIRS:
        found = before.rfind(quote, line_start)
        while quote == "'" and found > 0 and before[found - 1].isalnum() and before[found + 1 : found + 2].isalnum():
            found = before.rfind(quote, line_start, found)  # an apostrophe (don't, you're), not a quote
        if found > index:
            index, char = found, quote
    if index < 0:
        return False
    following = before[index + 1] if index + 1 < len(before) else view[start : start + 1]
    if not following or following.isspace():
        return False  # the nearest quote closes an earlier quotation
    after = view[end : end + 200]
    for line_break in ("\n", "\x1d"):
        found = after.find(line_break)
        if found >= 0:
            after = after[:found]
    if _QUOTE_PAIRS[char] not in after:
        return False
    lead = before[line_start:index].rstrip()
    if lead.endswith("\\"):
        lead = lead[:-1].rstrip()  # a JSON-escaped quote: \"
    previous = lead[-1:]
    if code and (not previous or previous in "=([,{:+"):
        return True  # a string literal in code
    return bool(previous) and (previous.isalnum() or previous in ".(")  # quoted in prose


_INTRODUCER_HINTS = ("as", "like", ".g.", ".e.", "for ", "phrase", "string", "contain", "say")


def _introduced(view: str, start: int) -> bool:
    """Does "such as", "e.g.", "phrases like" come right before the cue?"""
    before = view[max(0, start - 24) : start].lower()
    return any(hint in before for hint in _INTRODUCER_HINTS) and _INTRODUCER.search(before) is not None


_COMMENT_MARKERS = ("#", "//", "/*", "--", "<!--", ";")


def _in_comment(view: str, pos: int) -> bool:
    """Is `pos` inside a source-code comment? A "# TODO:" is a programmer's note, not an order to an agent."""
    line = view[max(0, pos - 120) : pos]
    line = line[max(line.rfind("\n"), line.rfind("\x1d")) + 1 :].strip()
    return line.startswith(_COMMENT_MARKERS) or line == "*"


def _analyse(view: str) -> tuple[list[_Cluster], bool]:
    """The cue clusters of `view`, and whether the cue bound cut the analysis short."""
    hits: list[_Hit] = []
    opens: list[tuple[int, int, str]] = []
    closes: list[tuple[int, int, str]] = []
    found, capped = _CUE_SET.find(view)
    for start, end, cue in found:
        if cue.structure == "negated" or (cue.kind == "todo" and _in_comment(view, start)):
            continue
        if cue.structure == "close":
            closes.append((start, end, view[start:end].strip("</>[] \t").lower()))
            continue
        if cue.structure == "open":
            name = view[start:end].strip("<>[] \t").lower()
            if cue.marker and view[start] == "<":
                # <system> is also a Maven pom element holding one word: a marker only around a sentence.
                inside = view[end : end + 80]
                close_at = inside.find("</")
                if close_at >= 0 and _XML_SYSTEM_CONTENT.search(inside[:close_at]) is None:
                    continue
            opens.append((start, end, name))
        elif not cue.marker:
            while start < end - 1 and not view[start].isalnum():  # ". Assistant, ..." starts at its first word
                start += 1
        hits.append(_Hit(start, end, cue))
    if not hits:
        return [], capped
    blocks = _pair_tags(opens, closes)
    clusters: list[_Cluster] = []
    for group, block in _group_hits(view, hits, blocks):
        cluster = _score_cluster(view, group, block)
        if cluster is not None:
            clusters.append(cluster)
    return clusters, capped


def _pair_tags(opens: list[tuple[int, int, str]], closes: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    blocks: list[tuple[int, int]] = []
    covered_to = -1
    for start, end, name in opens:
        if start < covered_to:
            continue  # nested in a block already taken
        for close_start, close_end, close_name in closes:
            if close_start >= end and close_name == name:
                if close_start - end <= _MAX_TAG_BLOCK:
                    blocks.append((start, close_end))
                    covered_to = close_end
                break
    return blocks


def _group_hits(
    view: str, hits: list[_Hit], blocks: list[tuple[int, int]]
) -> list[tuple[list[_Hit], tuple[int, int] | None]]:
    """Cluster cues: all cues inside one tag block together; elsewhere, cues close to each other."""
    block_starts = [start for start, _ in blocks]
    groups: list[tuple[list[_Hit], tuple[int, int] | None]] = []
    for hit in hits:
        index = bisect_right(block_starts, hit.start) - 1
        block = blocks[index] if index >= 0 and hit.start < blocks[index][1] else None
        if groups:
            last_hits, last_block = groups[-1]
            if block is not None and block == last_block:
                last_hits.append(hit)
                continue
            if block is None and last_block is None:
                gap_start = last_hits[-1].end
                if hit.start - gap_start <= _CLUSTER_GAP and (
                    hit.start <= gap_start or _HARD_BREAK.search(view[gap_start - 1 : hit.start]) is None
                ):
                    last_hits.append(hit)
                    continue
        groups.append(([hit], block))
    return groups


def _extent(view: str, hits: list[_Hit], block: tuple[int, int] | None) -> tuple[int, int]:
    if block is not None:
        return block
    first, last = hits[0], hits[-1]
    if first.cue.marker or first.cue.structure == "open":
        start = first.start
    else:
        start = _sentence_start(view, first.start, _block_floor(view, first.start))
    end = max(_block_end(view, last.end), last.end)
    for _ in range(2):  # "... do the following:" owns the next block
        if not view[start:end].rstrip().endswith(":"):
            break
        resume = _skip_space(view, end)
        if resume >= len(view) or resume - end > 200:
            break
        end = _block_end(view, resume + 1, _FIELD_BREAK)
    if _VERBATIM.search(view[start:end]) is not None:  # the dictated message runs to the end of its record
        end = max(end, _block_end(view, end, _HARD_BREAK))
    return start, end


def _score_cluster(view: str, hits: list[_Hit], block: tuple[int, int] | None) -> _Cluster | None:
    start, end = _extent(view, hits, block)
    low = max(0, start - _CONTEXT)
    # The window starts mid-line: a leading NUL keeps "^" from matching at its (arbitrary) start.
    around = view[low : end + _CONTEXT] if low == 0 else "\x00" + view[low : end + _CONTEXT]
    code = _CODE_PATTERN.search(around) is not None
    meta = _META_PATTERN.search(around) is not None
    instruction: dict[str, float] = {}
    markers: dict[str, float] = {}
    labels: dict[str, str] = {}
    marker_text = ""
    for hit in hits:
        weight = hit.cue.weight
        if hit.cue.paired and block is not None and hit.start == block[0]:
            weight = hit.cue.paired
        if hit.cue.requires and _REQUIREMENTS[hit.cue.requires].search(_rest_of_item(view, hit.end)) is None:
            continue
        if _quoted(view, hit.start, hit.end, code):
            weight *= _CODE_LITERAL if code else _QUOTED
        elif _introduced(view, hit.start):
            weight *= _QUOTED
        elif hit.cue.marker and code:
            weight *= _CODE_MARKER
        table = markers if hit.cue.marker else instruction
        if weight > table.get(hit.cue.kind, 0.0):
            table[hit.cue.kind] = weight
            labels[hit.cue.kind] = hit.cue.label
            if hit.cue.marker and weight >= max(markers.values()):
                marker_text = view[hit.start : hit.end].strip()[:32]
    extent = view[start : min(end, start + _MAX_TAG_BLOCK)]
    present = [label for pattern, _, label in _BOOSTERS if pattern.search(extent) is not None]
    booster = _noisy_or(weight for _, weight, label in _BOOSTERS if label in present)
    # Text about prompt injection lowers the whole cluster, boosters included: it mentions, it does not command.
    damp = _META if meta else 1.0
    instruction_raw = _noisy_or(instruction.values())
    marker_score = max(markers.values(), default=0.0) * damp
    score = _boost(_noisy_or((instruction_raw, *markers.values())), booster) * damp
    instruction_score = _boost(instruction_raw, booster) * damp
    kinds = frozenset(kind for kind, weight in {**instruction, **markers}.items() if weight > 0.0)
    if max(score, marker_score) < LOW_SCORE:
        # Kept with its cue classes: a weak secrecy request still matters in an agent rules file.
        return _Cluster(start, end, score, instruction_score, marker_score, marker_text, (), kinds) if kinds else None
    ranked = sorted({**instruction, **markers}.items(), key=lambda item: -item[1])
    cue_labels = [labels[kind] for kind, _ in ranked[:3]]
    if score >= LOW_SCORE and instruction_raw >= LOW_SCORE:
        cue_labels += present[:2]
    return _Cluster(
        start, end, score, instruction_score, marker_score, marker_text, tuple(dict.fromkeys(cue_labels)), kinds
    )


def _rest_of_item(view: str, pos: int) -> str:
    """The text after a cue up to the end of its paragraph or list item (a wrapped line continues it)."""
    rest = view[pos : pos + 300]
    match = _BREAK.search(rest)
    return rest[: _break_cut(match)] if match is not None else rest


# ---------------------------------------------------------------------------------------------------------------------
# Offsets: the view may differ from the original text (invisible characters, NFKC). Lines survive both, so a span is
# mapped line by line; inside a line whose length changed, it widens to the whole line.


def _line_starts(text: str) -> list[int]:
    starts = [0]
    index = text.find("\n")
    while index >= 0:
        starts.append(index + 1)
        index = text.find("\n", index + 1)
    return starts


class _OffsetMap:
    def __init__(self, original: str, view: str) -> None:
        self._original = original
        self._view = view
        self._same = original.isascii()  # then the view only swapped escapes for same-length stand-ins
        self._view_starts: list[int] = []
        self._original_starts: list[int] = []
        self._shifts: dict[int, list[int] | None] = {}  # by original line start

    def _line(self, offset: int) -> tuple[int, int, int, int, int] | None:
        if not self._view_starts:
            self._view_starts = _line_starts(self._view)
            self._original_starts = _line_starts(self._original)
        if len(self._view_starts) != len(self._original_starts):
            return None
        line = bisect_right(self._view_starts, offset) - 1
        view_start = self._view_starts[line]
        original_start = self._original_starts[line]
        last = line + 1 >= len(self._view_starts)
        view_end = len(self._view) if last else self._view_starts[line + 1] - 1
        original_end = len(self._original) if last else self._original_starts[line + 1] - 1
        return line, view_start, view_end, original_start, original_end

    def span(self, start: int, end: int) -> tuple[int, int]:
        if self._same:
            return start, end
        first, last = self._line(start), self._line(max(start, end - 1))
        if first is None or last is None:  # cannot happen for NFKC; stay safe with a proportional guess
            ratio = len(self._original) / max(1, len(self._view))
            return int(start * ratio), min(len(self._original), int(end * ratio) + 1)
        _, view_start, view_end, original_start, original_end = first
        mapped_start = original_start + (start - view_start)
        if view_end - view_start != original_end - original_start:
            column = self._column(view_start, view_end, original_start, original_end, start - view_start)
            mapped_start = original_start if column is None else original_start + column
        _, view_start, view_end, original_start, original_end = last
        mapped_end = original_start + (end - view_start)
        if view_end - view_start != original_end - original_start:
            column = None
            if end > view_start:
                column = self._column(view_start, view_end, original_start, original_end, end - 1 - view_start)
            mapped_end = original_end if column is None else original_start + column + 1
        return mapped_start, min(mapped_end, len(self._original))

    def _column(
        self, view_start: int, view_end: int, original_start: int, original_end: int, column: int
    ) -> int | None:
        """Where view column `column` of a line sits in the original line, when the line only lost invisible
        characters (the common zero-width case); None when NFKC changed it too, or the line is huge (then the caller
        widens the span to the whole line). Each line is examined once, however many spans it holds."""
        shifts = self._shifts.get(original_start, ())
        if shifts == ():
            shifts = self._line_shifts(self._original[original_start:original_end], self._view[view_start:view_end])
            self._shifts[original_start] = shifts
        if shifts is None:
            return None
        return column + bisect_right(shifts, column)

    @staticmethod
    def _line_shifts(line: str, view_line: str) -> list[int] | None:
        """For the k-th removed character at original column d_k, d_k - k: the view columns at or after which one
        more original character lies hidden. Sorted, so a bisect counts the removals before a view column."""
        if len(line) > _MAX_EXACT_LINE:
            return None
        translated = line.translate(_VIEW_TABLE)
        if translated != view_line or len(line) - len(translated) > _MAX_EXACT_REMOVED:
            return None
        return [match.start() - index for index, match in enumerate(_DELETED.finditer(line))]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and (text[start].isspace() or text[start] in "\"'"):
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] in ",\"'"):
        end -= 1
    return start, end


def find_injection_spans(text: str) -> list[InjectionSpan]:
    """The injected blocks in untrusted `text`, sorted by start. Never raises; a benign text yields []."""
    return analyse_text(text)[0]


def analyse_text(text: str) -> tuple[list[InjectionSpan], bool]:
    """`find_injection_spans`, plus whether a bound cut the analysis short: a text over `MAX_TEXT_CHARS` (only its
    head is analysed) or with more than `_MAX_HITS` cues (only the first ones count). Provenance reports it."""
    if not isinstance(text, str) or not text:
        return [], False
    truncated = len(text) > MAX_TEXT_CHARS
    original = text[:MAX_TEXT_CHARS] if truncated else text
    view = _view(original)
    offsets = _OffsetMap(original, view)
    spans: list[InjectionSpan] = []
    clusters, capped = _analyse(view)
    truncated = truncated or capped
    for cluster in clusters:
        if cluster.score < SPAN_THRESHOLD:
            continue
        start, end = _trim(original, *offsets.span(cluster.start, cluster.end))
        if end <= start:
            continue
        category = CATEGORY_ROLE_MARKER if cluster.marker_score >= cluster.instruction_score else CATEGORY_INSTRUCTIONS
        span = InjectionSpan(start, end, category, round(min(1.0, cluster.score), 3), ", ".join(cluster.labels))
        if spans and start <= spans[-1].end + 200 and not original[spans[-1].end : start].strip():
            previous = spans.pop()
            stronger = previous if previous.score >= span.score else span
            span = InjectionSpan(
                previous.start, max(previous.end, end), stronger.category, stronger.score, stronger.cue
            )
        spans.append(span)
    return sorted(spans, key=lambda span: (span.start, span.end)), truncated


# ---------------------------------------------------------------------------------------------------------------------


def _severity(score: float) -> Severity | None:
    if score >= HIGH_SCORE:
        return Severity.HIGH
    if score >= MEDIUM_SCORE:
        return Severity.MEDIUM
    if score >= LOW_SCORE:
        return Severity.LOW
    return None


class InjectionScanner(Scanner):
    """Flags arguments that carry instructions aimed at a model, or fake chat-template role markers."""

    name: ClassVar[str] = "injection"
    categories: ClassVar[frozenset[str]] = frozenset({CATEGORY_INSTRUCTIONS, CATEGORY_ROLE_MARKER})

    def scan(self, call: ToolCall, targets: Sequence[ScanTarget], settings: ScanSettings) -> Iterable[Finding]:
        sink = FindingSink(self.name)
        rules_file: str | None = None  # looked up once, only when some text asks for secrecy
        for target, view in _with_cues(targets):
            clusters, _ = _analyse(view)  # a text with thousands of cues is flagged by the first ones
            if not clusters:
                continue
            best_instruction = max(clusters, key=_instruction_evidence)
            severity = _severity(_instruction_evidence(best_instruction))
            secret = next((cluster for cluster in clusters if cluster.kinds & _SECRECY), None)
            if secret is not None and (severity is None or severity < Severity.MEDIUM):
                rules_file = _rules_file(targets) if rules_file is None else rules_file
                if rules_file:
                    # Every later session of every agent in the repository reads this file and obeys it.
                    sink.add(
                        target,
                        CATEGORY_INSTRUCTIONS,
                        Severity.MEDIUM,
                        f"secrecy instruction written into an agent rules file ({rules_file[:60]})",
                    )
                    severity = None
            if severity is not None:
                sink.add(
                    target,
                    CATEGORY_INSTRUCTIONS,
                    severity,
                    f"instructions aimed at an AI agent: {', '.join(best_instruction.labels)} "
                    f"(score {_instruction_evidence(best_instruction):.2f})",
                )
            best_marker = max(clusters, key=lambda cluster: cluster.marker_score)
            severity = _severity(best_marker.marker_score)
            if severity is not None:
                sink.add(
                    target,
                    CATEGORY_ROLE_MARKER,
                    severity,
                    f"fake chat-template role marker {best_marker.marker_text!r} in argument text",
                )
        return sink.findings


def _instruction_evidence(cluster: _Cluster) -> float:
    """How strongly a cluster instructs an agent. A weak role marker ("System:" before a sentence to the model) is
    not reported on its own, so it counts towards the instructions it introduces."""
    return cluster.score if cluster.marker_score < MEDIUM_SCORE else cluster.instruction_score


_SECRECY = frozenset({"conceal", "conceal_soft"})
# Files that coding agents load as standing instructions (Cursor, Windsurf, Cline, Codex, Claude Code, Gemini, Copilot).
_RULES_FILE = compile_pattern(
    r"(?:^|[/\\\s\"'=:])(?:\.cursorrules|\.windsurfrules|\.clinerules|AGENTS\.md|CLAUDE\.md|GEMINI\.md|"
    r"copilot-instructions\.md|\.cursor[/\\]rules[/\\][\w.\-]+|\.github[/\\]instructions[/\\][\w.\-]+)"
    r"(?:$|[\s\"';&|>)])",
    ignore_case=True,
)


def _rules_file(targets: Sequence[ScanTarget]) -> str:
    """The agent rules file that a call writes: a path argument, or a command that names it; "" when none.

    A long text that merely mentions CLAUDE.md (an email, a README) is not a write to it.
    """
    for target in targets:
        text = target.text
        if target.exec_position or (len(text) <= 1024 and "\n" not in text):
            match = _RULES_FILE.search(text[:65_536])
            if match is not None:
                return match.group(0).strip("/\\ \t\n\"'=:;&|>)")
    return ""


_TARGET_SEPARATOR = "\n\x00\n"


def _with_cues(targets: Sequence[ScanTarget]) -> list[tuple[ScanTarget, str]]:
    """The targets whose text has at least one cue, with their views.

    One RE2 pass over all targets joined: the per-call overhead of the RE2 binding (microseconds) would otherwise be
    paid once per string, and most calls have no cue at all. A match that straddles a separator marks both targets;
    each candidate is then analysed on its own.
    """
    views = [(target, _view(target.text[:MAX_TEXT_CHARS])) for target in targets if len(target.text) >= 6]
    if not views:
        return []
    starts: list[int] = []
    offset = 0
    for _, view in views:
        starts.append(offset)
        offset += len(view) + len(_TARGET_SEPARATOR)
    marked: set[int] = set()
    joined = _TARGET_SEPARATOR.join(view for _, view in views)
    data: str | bytes = joined.encode("ascii") if joined.isascii() else joined
    for count, match in enumerate(_CUE_SET.anywhere.finditer(data)):
        if count >= _MAX_HITS:
            break
        first = bisect_right(starts, match.start()) - 1
        last = bisect_right(starts, max(match.start(), match.end() - 1)) - 1
        marked.update(range(first, last + 1))
    return [views[index] for index in sorted(marked)]
