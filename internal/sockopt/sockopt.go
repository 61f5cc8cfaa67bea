// Package sockopt holds the socket options that the agent's and mcpgw's
// plain TCP dials share. It only sets options on sockets it is given.
package sockopt
