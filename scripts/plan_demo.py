"""One robot plan through reflexd's tool calls (docs/tools.md), the last act
of `make demo`: "pick up the red cube" → the model writes a `move_arm` call
(constrained to config/tools/move_arm.json while it forms) → the daemon
validates it and publishes it on robot/arm/cmd → this script's "robot"
(a zenoh subscriber on that key) receives it and answers → the result is
fed back as a `tool` message → the model answers in plain words.

The plan is driven here, one command per step, as any client would: the
daemon keeps nothing between steps. Loopback only: it connects to
REFLEXD_CONNECT (default tcp/127.0.0.1:7447) with scouting off. Exits
non-zero if any step fails (no call, a call the robot did not receive, an
error message).
"""

import json
import os
import queue
import sys
import time

import zenoh

CMD = "reflexd/llm/cmd"
OUT = "reflexd/llm/out"
ARM = "robot/arm/cmd"
PLAN_ID = "plan-1"
TASK = "Pick up the red cube at x=0.3, y=0.1, z=0.05."
TIMEOUT_S = 120


def open_session(connect: str) -> zenoh.Session:
    conf = {
        "mode": "peer",
        "listen": {"endpoints": []},
        "connect": {"endpoints": [connect]},
        "scouting": {"multicast": {"enabled": False}, "gossip": {"enabled": False}},
    }
    return zenoh.open(zenoh.Config.from_json5(json.dumps(conf)))


def step(session, inbox: "queue.Queue", cmd: dict) -> dict:
    """Sends one command; prints the stream; returns the final message and
    the tool_call (if any)."""
    session.put(CMD, json.dumps(cmd))
    t0 = time.monotonic()
    call = None
    print("    model: ", end="", flush=True)
    while True:
        try:
            key, msg = inbox.get(timeout=TIMEOUT_S)
        except queue.Empty:
            raise SystemExit(f"plan_demo: no answer to {cmd['id']} within {TIMEOUT_S}s")
        if msg.get("id") != cmd["id"]:
            continue
        if key.endswith("/error"):
            raise SystemExit(f"\nplan_demo: error {msg.get('code')}: {msg.get('message')}")
        if "tool_call" in msg:
            call = msg["tool_call"]
            continue
        if msg.get("done"):
            print(f"\n    [{msg['finish_reason']}, {msg['usage']['completion_tokens']} tokens,"
                  f" {time.monotonic() - t0:.1f} s]")
            return {"final": msg, "call": call}
        print(msg.get("text", ""), end="", flush=True)


def main() -> int:
    session = open_session(os.environ.get("REFLEXD_CONNECT", "tcp/127.0.0.1:7447"))
    inbox: "queue.Queue" = queue.Queue()
    robot: "queue.Queue" = queue.Queue()

    def on_out(s):
        inbox.put((str(s.key_expr), json.loads(s.payload.to_bytes())))

    def on_arm(s):
        robot.put(json.loads(s.payload.to_bytes()))

    _out = session.declare_subscriber(f"{OUT}/**", on_out)
    _arm = session.declare_subscriber(ARM, on_arm)
    time.sleep(1.0)  # let both subscriptions reach the daemon

    print(f"  user: {TASK}")
    print(f"  step 1: tools [move_arm], tool_choice required (the call is constrained to the schema)")
    first = step(session, inbox, {
        "id": PLAN_ID, "prompt": TASK, "tools": ["move_arm"],
        "tool_choice": "required", "max_steps": 1, "max_tokens": 64,
    })
    call = first["call"]
    if call is None or not call.get("published"):
        raise SystemExit(f"plan_demo: expected a published move_arm call, got {first['final']}")
    print(f"    tool_call {call['call_id']}: {call['name']} {json.dumps(call['arguments'])}"
          f" → published on {call['key']}")
    try:
        got = robot.get(timeout=10)
    except queue.Empty:
        raise SystemExit(f"plan_demo: the robot did not receive {call['call_id']} on {ARM}")
    if got.get("call_id") != call["call_id"] or got.get("arguments") != call["arguments"]:
        raise SystemExit(f"plan_demo: the robot received {got}, not the reported call")
    a = got["arguments"]
    result = (f"done: the gripper is at x={a['x']}, y={a['y']}, z={a['z']}"
              f" and {'closed on the red cube' if a['gripper'] == 'close' else a['gripper']}")
    print(f"  robot: received {got['call_id']} on {ARM}; answers: {result!r}")

    print("  step 2: the result fed back (role tool); the budget is spent, so the model answers in words")
    second = step(session, inbox, {
        "id": PLAN_ID, "tools": ["move_arm"], "max_steps": 1, "max_tokens": 48,
        "messages": [
            {"role": "user", "content": TASK},
            {"role": "assistant", "content": first["final"]["text"]},
            {"role": "tool", "name": "move_arm", "content": result},
        ],
    })
    if second["call"] is not None or not second["final"]["text"].strip():
        raise SystemExit(f"plan_demo: expected a plain answer, got {second['final']}")
    extra = []
    while not robot.empty():
        extra.append(robot.get())
    if extra:
        raise SystemExit(f"plan_demo: the robot received calls nobody reported: {extra}")
    print("  plan done: 1 call validated and published, 1 result fed back, 1 final answer")
    session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
