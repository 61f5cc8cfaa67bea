// Package config reads and checks the agent's configuration file.
//
// The file is YAML (Parse) or, on OpenWrt, the UCI file
// /etc/config/mcpagent (ParseUCI), whose options map one to one onto the
// YAML keys. Decoding is strict: an unknown key, a value of the wrong type
// or an out-of-range setting is an error that names the key, so a typo
// never silently turns a feature off. Both check the same way and return a
// Config with every default filled in; the rest of the agent never
// re-checks it.
//
// Package config does no I/O beyond reading the file it is given, and knows
// nothing of sockets, netfilter or netlink.
package config
