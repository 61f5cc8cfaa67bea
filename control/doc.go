// Package control is the agent's local control channel: a unix socket on
// which the running agent answers one request per connection, and the
// client that local programs use to reach it — the DHCP clients' hook
// scripts, through `mcpagent dhcp-event`, hand it the options they
// received.
//
// The protocol is one line of JSON each way: a Request with exactly one
// member set, then a Response. New kinds of request (status, for one) are
// new members of Request; a server refuses members it does not know.
//
// Package control carries requests; it does not act on them (the agent
// does, through Config's handlers) and it does not decode DHCP options.
// The socket is created with mode 0600, so only its owner (root, on a
// router) can talk to the agent; no other privilege is needed.
package control
