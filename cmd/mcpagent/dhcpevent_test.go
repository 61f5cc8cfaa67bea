package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestOptionsFromEnv(t *testing.T) {
	env := []string{
		"interface=wan", "ip=10.0.1.2", "opt224=C6336401", "opt252=", "opt0=00", "opt256=00",
		"opt+1=00", "optx=00", "opt=00", "OPTION_65001=20010db8000400000000000000000001", "OPTION_23=x",
		"OPTION_70000=00", "PATH=/usr/bin",
	}
	tests := []struct {
		name   string
		family int
		want   map[uint16]string
	}{
		{name: "udhcpc", family: 4, want: map[uint16]string{224: "C6336401", 252: ""}},
		{name: "odhcp6c", family: 6, want: map[uint16]string{65001: "20010db8000400000000000000000001", 23: "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, optionsFromEnv(env, tt.family)); diff != "" {
				t.Errorf("optionsFromEnv (-want +got):\n%s", diff)
			}
		})
	}
	if got := optionsFromEnv([]string{"PATH=/bin"}, 4); got != nil {
		t.Errorf("no options: %v, want nil", got)
	}
}
