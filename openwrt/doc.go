// Package openwrt holds the OpenWrt packaging of mcpagent — the feed
// package in mcpagent/ and, in its tests, the check that the ipk built by
// scripts/ipk.sh installs what a router needs. It has no Go API: the files
// it owns are a Makefile, shell scripts and a UCI file (see README.md).
package openwrt
