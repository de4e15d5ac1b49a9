"""OSRS1: a byte stream that outlives the tunnel carrying it, so live SSH sessions survive a
gateway restart.

Both ends are ours: ``ssh-proxy`` on the user's side and the supervisor in the sandbox; the gateway
between them only relays. Each end numbers the bytes it sends, keeps what the peer has not
acknowledged in a bounded buffer, and after a reconnection resends from the offset the peer says it
has. OpenSSH on either side sees one unbroken stream. The wire format is in docs/internals.md.

Layers, so that the protocol can be tested without sockets (one module each):

- :mod:`.frames`: frame kinds on :mod:`openshell_core.wire.frames` (:func:`~.frames.encode_frame`,
  :class:`~.frames.FrameDecoder`);
- :mod:`.lines`: the control lines (open/resume requests and their replies,
  :func:`~.lines.resume_proof`) and :func:`~.lines.judge_resume`, the supervisor's resume rules;
- :mod:`.buffer` (:class:`~.buffer.SendBuffer`) and :mod:`.stream` (:class:`~.stream.StreamState`):
  the sans-I/O state of one end (what to send, what was received, acknowledgements);
- :mod:`.end`: :class:`~.end.StreamEnd`, the asyncio driver of one end: a local pump that outlives
  attachments, and :meth:`~.end.StreamEnd.attach` which runs one transport until it breaks, goes
  silent or the stream ends;
- :mod:`.errors`: what can go wrong.

Standard library only (the sandbox image has no third-party packages).
"""
