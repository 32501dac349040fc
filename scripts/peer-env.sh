#!/usr/bin/env bash
# The peer that `onevec bench` compares the sessionize stage with: a Quix Streams app, installed
# in a virtualenv of its own (.peer-venv at the repository's root) so that onevec's pinned
# environment (.venv) is never touched. The bench runs the peer from there when it exists and
# prints "not installed: run scripts/peer-env.sh" otherwise. Run again to rebuild it.
set -euo pipefail
cd "$(dirname "$0")/.."
PEER_VENV=.peer-venv
QUIXSTREAMS_VERSION=3.28.1

rm -rf "$PEER_VENV"
python3 -m venv "$PEER_VENV"
"$PEER_VENV/bin/python" -m pip install -q --upgrade pip
"$PEER_VENV/bin/python" -m pip install -q "quixstreams==$QUIXSTREAMS_VERSION"
"$PEER_VENV/bin/python" -c "import quixstreams; print('peer ready: quixstreams', quixstreams.__version__, 'in $PEER_VENV')"
