"""Dump AgentDojo's workspace and travel ground truths into a small JSON fixture.

Run once, in a throwaway venv that has `agentdojo` installed (it is not a dependency of aegis-proxy):

    python3 -m venv /tmp/adojo && /tmp/adojo/bin/pip install agentdojo
    /tmp/adojo/bin/python tests/corpus/build/extract_agentdojo.py

Only the workspace and travel suites are read. The banking and slack suites are reserved for an independent
evaluation and must never be used to build this corpus.

For every user task we replay its ground-truth calls against the default environment with every injection vector
set to a sentinel `@@INJ:<vector>@@`, and keep each call's arguments and its tool output (formatted as AgentDojo shows
it to the model). `build_corpus.py` later puts either the vector's benign default or an attack text in place of the
sentinel, so that step needs no agentdojo.
"""

from __future__ import annotations

import json
from pathlib import Path

from agentdojo.agent_pipeline.tool_execution import tool_result_to_str
from agentdojo.functions_runtime import FunctionsRuntime
from agentdojo.task_suite.load_suites import get_suite

VERSION = "v1.2.2"
SUITES = ("workspace", "travel")  # never banking or slack: reserved for independent evaluation
OUT = Path(__file__).with_name("agentdojo_fixture.json")


def sentinel(vector: str) -> str:
    return f"@@INJ:{vector}@@"


def main() -> None:
    fixture: dict = {"agentdojo_version": VERSION, "suites": {}}
    for suite_name in SUITES:
        suite = get_suite(VERSION, suite_name)
        defaults = suite.get_injection_vector_defaults()
        canaries = {vector: sentinel(vector) for vector in defaults}
        plain_env = suite.load_and_inject_default_environment({})
        user_tasks = []
        for task_id, task in suite.user_tasks.items():
            env = suite.load_and_inject_default_environment(canaries)
            runtime = FunctionsRuntime(suite.tools)
            steps = []
            for call in task.ground_truth(plain_env.model_copy(deep=True)):
                result, error = runtime.run_function(env, call.function, dict(call.args))
                output = error if error else tool_result_to_str(result)
                steps.append(
                    {
                        "function": call.function,
                        "args": json.loads(json.dumps(dict(call.args), default=str)),
                        "output": output,
                    }
                )
            user_tasks.append({"id": task_id, "prompt": task.PROMPT.strip(), "steps": steps})
        injection_tasks = []
        for task_id, task in suite.injection_tasks.items():
            calls = [
                {"function": c.function, "args": json.loads(json.dumps(dict(c.args), default=str))}
                for c in task.ground_truth(plain_env.model_copy(deep=True))
            ]
            injection_tasks.append({"id": task_id, "goal": task.GOAL, "calls": calls})
        fixture["suites"][suite_name] = {
            "vectors": defaults,
            "user_tasks": user_tasks,
            "injection_tasks": injection_tasks,
        }
    OUT.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
