#!/usr/bin/env python3
"""A MUSCLE3-style instantiator loop on a running drover serve: start a
macro model and two micro models, collect exits as they come, and cancel
the rest when one fails. Run: PYTHONPATH=python python3 examples/agent_manager.py"""
import tempfile

from drover import AgentManager

am = AgentManager()  # finds serve through $DROVER_HOME/serve.json
try:
    resources = am.get_resources()  # {node: [set of hwthreads per core]}
    node = sorted(resources)[0]
    print(node, "has", len(resources[node]), "cores")
    work = tempfile.mkdtemp(prefix="drover-am-")
    models = {"macro": "sleep 300", "micro.0": "exit 0", "micro.1": "sleep 0.2; exit 1"}
    for name, cmd in models.items():
        am.start(node, name, work, ["sh", "-c", cmd], {"MODEL": name},
                 f"{work}/{name}.out", f"{work}/{name}.err")
    running = set(models)
    while running:
        for name, code in am.get_finished(wait=10.0):  # a signal is -N
            running.discard(name)
            print(f"{name}: {code}")
            if code != 0 and running:
                print("a model failed; cancelling", ", ".join(sorted(running)))
                am.cancel_all()
finally:
    am.shutdown()
