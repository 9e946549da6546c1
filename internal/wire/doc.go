// Package wire carries node.Node over gRPC: the agent session of
// api/droverpb. It is an adapter at the edge; the core never imports it.
//
// Agents dial the manager (nothing listens on a node) and keep one
// AgentSession.Connect stream open. On the manager, a Server turns every
// agent into a RemoteNode, a node.Node; on the node, RunAgent serves an
// *agent.Agent (any AgentNode) to the manager.
//
// # Protocol
//
//   - The agent's first message is Hello{node, resources, version,
//     session}; the manager answers Welcome{session, heartbeat interval,
//     monitor timeout}. An empty session is a new agent; the session of an
//     earlier Welcome resumes that RemoteNode. A session the manager has
//     given up (or never knew) gets Welcome{given_up}: the agent stops
//     everything and exits.
//   - Each side has a single writer per stream that batches: whatever was
//     queued while the previous Send was in flight goes into the next
//     message (commands, acks, cancels, heartbeat on the manager; replies,
//     exits, heartbeat on the agent).
//   - Commands carry increasing ids. The agent runs quick ones inline in
//     arrival order and start and send in goroutines, and caches each reply
//     until ack_replies (the manager's "everything up to here arrived")
//     covers it. After a reconnect the manager resends every command without
//     a reply; the agent answers a repeat from its cache, or not at all while
//     it still runs, and never runs a command twice. A caller whose context
//     ends abandons its command: unsent, it is dropped; sent, its id goes in
//     ManagerMsg.cancel and the agent cancels it (or, if it never arrived,
//     answers it as cancelled without running it).
//   - Errors cross as text plus ErrorKind, and come back wrapping the
//     core's typed errors (errdefs.ErrUnknownProcess, ...), so errors.Is works.
//   - Exits carry seq from 1 up. The manager delivers each seq once (a
//     lower or equal one is a repeat) and acknowledges with ack_exits; the
//     agent keeps and, after a reconnect, resends every unacknowledged exit.
//   - Any message is a sign of life. An agent sends a heartbeat every
//     third of NodeTimeout, the manager every third of the monitor timeout
//     (by default) and with Welcome; one with sent_unix_nano is echoed on
//     the next message with how long it was held, for RTT. After
//     NodeTimeout without a message the manager declares the node lost:
//     pending calls fail with errdefs.ErrNodeLost, Ready is closed. After the
//     monitor timeout without a message (stream up or down) the agent stops
//     every process and RunAgent returns ErrMonitorTimeout.
//   - A Shutdown command is answered at once; the agent then stops every
//     process, reports their exits, waits for the acks and half-closes the
//     stream, which ends the session on the manager.
//   - For an agent that does not share the manager's filesystem, staged
//     files go as PutFile commands and results come back as FileData ahead
//     of their exit: the chunks of internal/filexfer, which does the work
//     (files.go adapts it).
package wire
