// Package sockopt holds the socket options that legs and the plain TCP
// dials of the agent and mcpgw share. It only sets options on sockets it
// is given.
package sockopt
