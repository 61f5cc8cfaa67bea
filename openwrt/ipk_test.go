package openwrt_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mcpagent/mcpagent/internal/netnstest"
)

// arch is the package architecture of the most common OpenWrt router CPU,
// the MT7621's MIPS 24Kc (little-endian, no FPU).
const arch = "mipsel_24kc"

// maxBinarySize bounds the stripped agent: routers have 16 MB of flash or
// less, shared with the firmware.
const maxBinarySize = 6 << 20

// member is one file of a tar archive.
type member struct {
	hdr  *tar.Header
	body []byte
}

// TestIPK builds the mipsel_24kc package the way `make ipk` does, unpacks it
// as opkg would and checks what lands on the router.
func TestIPK(t *testing.T) {
	requireBuildTools(t)
	path := buildIPK(t, arch, t.TempDir())
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	outer, _ := readTarGz(t, b)

	// ipkg-build's order and content.
	if diff := cmp.Diff([]string{"./debian-binary", "./data.tar.gz", "./control.tar.gz"}, names(outer)); diff != "" {
		t.Fatalf("outer members (-want +got):\n%s", diff)
	}
	if got := string(outer[0].body); got != "2.0\n" {
		t.Errorf("debian-binary = %q, want %q", got, "2.0\n")
	}
	data, dataTar := readTarGz(t, outer[1].body)
	control, _ := readTarGz(t, outer[2].body)
	fields := controlFields(t, find(t, control, "./control").body)

	epoch := git(t, "log", "-1", "--format=%ct")
	t.Run("root owned, mtime of the commit", func(t *testing.T) {
		if fields["SourceDateEpoch"] != epoch {
			t.Errorf("SourceDateEpoch = %q, want the commit time %s", fields["SourceDateEpoch"], epoch)
		}
		for _, set := range [][]member{outer, data, control} {
			for _, m := range set {
				h := m.hdr
				if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" || strconv.FormatInt(h.ModTime.Unix(), 10) != epoch {
					t.Errorf("%s: owner %d:%d (%q:%q), mtime %d; want 0:0, numeric, %s", h.Name, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime.Unix(), epoch)
				}
			}
		}
	})

	t.Run("control", func(t *testing.T) {
		version := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(path), "mcpagent_"), "_"+arch+".ipk")
		for k, want := range map[string]string{
			"Package":        "mcpagent",
			"Version":        version,
			"Architecture":   arch,
			"Section":        "net",
			"Installed-Size": strconv.Itoa(len(dataTar)), // as ipkg-build: zcat data.tar.gz | wc -c
		} {
			if fields[k] != want {
				t.Errorf("%s = %q, want %q", k, fields[k], want)
			}
		}
		// What the default nftables backend needs beside fw4: the queue,
		// tproxy, socket and fib expressions.
		wantDeps := []string{"libc", "kmod-nft-queue", "kmod-nft-tproxy", "kmod-nft-socket", "kmod-nft-fib"}
		if diff := cmp.Diff(wantDeps, strings.Split(fields["Depends"], ", ")); diff != "" {
			t.Errorf("Depends (-want +got):\n%s", diff)
		}
		if !strings.Contains(fields["Description"], "Multipath TCP") {
			t.Errorf("Description = %q", fields["Description"])
		}
		if got := string(find(t, control, "./conffiles").body); got != "/etc/config/mcpagent\n" {
			t.Errorf("conffiles = %q, want /etc/config/mcpagent", got)
		}
		for name, fn := range map[string]string{"./postinst": "default_postinst", "./prerm": "default_prerm"} {
			m := find(t, control, name)
			if m.hdr.Mode&0o777 != 0o755 || !strings.Contains(string(m.body), fn+` "$0" "$@"`) {
				t.Errorf("%s: mode %o, want 0755 and OpenWrt's %s:\n%s", name, m.hdr.Mode, fn, m.body)
			}
		}
	})

	t.Run("files and modes", func(t *testing.T) {
		var got []string
		for _, m := range data {
			got = append(got, fmt.Sprintf("%c %04o %s", m.hdr.Typeflag, m.hdr.Mode, m.hdr.Name))
		}
		want := []string{
			"5 0755 ./", // a wrong mode here would be applied to the router's /
			"5 0755 ./etc/",
			"5 0755 ./etc/config/",
			"0 0600 ./etc/config/mcpagent",
			"5 0755 ./etc/init.d/",
			"0 0755 ./etc/init.d/mcpagent",
			"5 0755 ./etc/odhcp6c.user.d/",
			"0 0644 ./etc/odhcp6c.user.d/mcpagent",
			"5 0755 ./etc/uci-defaults/",
			"0 0755 ./etc/uci-defaults/mcpagent",
			"5 0755 ./etc/udhcpc.user.d/",
			"0 0644 ./etc/udhcpc.user.d/mcpagent",
			"5 0755 ./usr/",
			"5 0755 ./usr/sbin/",
			"0 0755 ./usr/sbin/mcpagent",
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("data.tar.gz (-want +got):\n%s", diff)
		}
	})

	root := t.TempDir()
	extract(t, data, root)
	bin := filepath.Join(root, "usr/sbin/mcpagent")

	t.Run("static mipsle softfloat binary", func(t *testing.T) {
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if f.Class != elf.ELFCLASS32 || f.Data != elf.ELFDATA2LSB || f.Machine != elf.EM_MIPS || f.Type != elf.ET_EXEC {
			t.Errorf("ELF %v %v %v %v, want ELFCLASS32 ELFDATA2LSB EM_MIPS ET_EXEC", f.Class, f.Data, f.Machine, f.Type)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Errorf("program header %v: not statically linked", p.Type)
			}
		}
		if f.Section(".symtab") != nil {
			t.Error("symbol table present: not stripped")
		}
		info, err := buildinfo.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		settings := map[string]string{}
		for _, s := range info.Settings {
			settings[s.Key] = s.Value
		}
		for k, want := range map[string]string{"GOOS": "linux", "GOARCH": "mipsle", "GOMIPS": "softfloat", "CGO_ENABLED": "0", "-trimpath": "true"} {
			if settings[k] != want {
				t.Errorf("built with %s=%q, want %q", k, settings[k], want)
			}
		}
		st, err := os.Stat(bin)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("usr/sbin/mcpagent: %d bytes (limit %d); ipk: %d bytes", st.Size(), maxBinarySize, len(b))
		if st.Size() > maxBinarySize {
			t.Errorf("usr/sbin/mcpagent is %d bytes, more than %d", st.Size(), maxBinarySize)
		}
		// The README states the size; keep it true.
		readme, err := os.ReadFile("../README.md")
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`mcpagent for mipsle: about ([0-9.]+) MB stripped`).FindSubmatch(readme)
		if m == nil {
			t.Fatal("README.md does not state the mipsle binary's size (\"mcpagent for mipsle: about N MB stripped\")")
		}
		stated, _ := strconv.ParseFloat(string(m[1]), 64)
		if actual := float64(st.Size()) / (1 << 20); math.Abs(actual-stated) > 0.15 {
			t.Errorf("README.md says the mipsle binary is about %.1f MB; it is %.2f MB", stated, actual)
		}
	})

	t.Run("binary accepts the shipped configuration on a MIPS CPU", func(t *testing.T) {
		netnstest.RequireTool(t, "qemu-mipsel-static")
		out := run(t, "", "qemu-mipsel-static", bin, "-version")
		if want := "mcpagent " + git(t, "describe", "--tags", "--always", "--dirty") + "\n"; out != want {
			t.Errorf("-version printed %q, want %q", out, want)
		}
		if out := run(t, "", "qemu-mipsel-static", bin, "-check", "-uci", filepath.Join(root, "etc/config/mcpagent")); out != "configuration ok\n" {
			t.Errorf("-check printed %q", out)
		}
	})

	t.Run("init script", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(root, "etc/init.d/mcpagent"))
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		if !strings.HasPrefix(s, "#!/bin/sh /etc/rc.common\n") || !strings.Contains(s, "\nUSE_PROCD=1\n") {
			t.Errorf("not a procd init script:\n%s", s)
		}
		for _, want := range []string{`procd_set_param command "$PROG" -uci "$CONF"`, "procd_set_param respawn", `procd_set_param limits nofile="65536 65536"`, "procd_add_reload_trigger mcpagent"} {
			if !strings.Contains(s, want) {
				t.Errorf("init script lacks %q", want)
			}
		}
	})

	t.Run("shell scripts pass busybox sh -n and shellcheck", func(t *testing.T) {
		netnstest.RequireTool(t, "busybox", "shellcheck")
		ctrl := t.TempDir()
		extract(t, control, ctrl)
		for _, f := range []string{
			filepath.Join(root, "etc/init.d/mcpagent"),
			filepath.Join(root, "etc/uci-defaults/mcpagent"),
			filepath.Join(root, "etc/udhcpc.user.d/mcpagent"),
			filepath.Join(root, "etc/odhcp6c.user.d/mcpagent"),
			filepath.Join(ctrl, "postinst"),
			filepath.Join(ctrl, "prerm"),
		} {
			run(t, "", "busybox", "sh", "-n", f)
			run(t, "", "shellcheck", "-s", "sh", f)
		}
	})
}

// TestIPKReproducible builds the package twice: the same commit must give
// the same bytes.
func TestIPKReproducible(t *testing.T) {
	requireBuildTools(t)
	a, err := os.ReadFile(buildIPK(t, arch, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(buildIPK(t, arch, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Errorf("two builds differ: %d and %d bytes", len(a), len(b))
	}
}

func requireBuildTools(t *testing.T) {
	t.Helper()
	netnstest.RequireTool(t, "bash", "git", "go", "tar", "gzip")
	err := exec.Command("git", "-C", "..", "rev-parse", "--git-dir").Run()
	netnstest.Require(t, err == nil, "a git checkout (scripts/ipk.sh versions and dates the package from git)")
}

// buildIPK runs scripts/ipk.sh for arch into dir and returns the package.
// Version and date come from git, as for `make ipk`.
func buildIPK(t *testing.T, arch, dir string) string {
	t.Helper()
	cmd := exec.Command("bash", "scripts/ipk.sh", arch, dir)
	cmd.Dir = ".."
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "VERSION" && k != "PKG_VERSION" && k != "SOURCE_DATE_EPOCH" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/ipk.sh: %v\n%s", err, out)
	}
	got, err := filepath.Glob(filepath.Join(dir, "mcpagent_*_"+arch+".ipk"))
	if err != nil || len(got) != 1 {
		t.Fatalf("scripts/ipk.sh made %v (%v), want one mcpagent_*_%s.ipk", got, err, arch)
	}
	return got[0]
}

// readTarGz returns the members of a gzip'd tar and the tar itself.
func readTarGz(t *testing.T, b []byte) ([]member, []byte) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	var ms []member
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return ms, raw
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, member{hdr: h, body: body})
	}
}

func names(ms []member) []string {
	var n []string
	for _, m := range ms {
		n = append(n, m.hdr.Name)
	}
	return n
}

func find(t *testing.T, ms []member, name string) member {
	t.Helper()
	for _, m := range ms {
		if m.hdr.Name == name {
			return m
		}
	}
	t.Fatalf("no %s in %v", name, names(ms))
	return member{}
}

// extract writes the members under dir as opkg would under /.
func extract(t *testing.T, ms []member, dir string) {
	t.Helper()
	for _, m := range ms {
		name := filepath.Clean(m.hdr.Name)
		if !filepath.IsLocal(name) && name != "." {
			t.Fatalf("member %q escapes the root", m.hdr.Name)
		}
		p := filepath.Join(dir, name)
		switch m.hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			if err := os.WriteFile(p, m.body, os.FileMode(m.hdr.Mode)&0o777); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("member %s has type %c", m.hdr.Name, m.hdr.Typeflag)
		}
	}
}

// controlFields parses a control file; continuation lines (" text") join
// the previous field.
func controlFields(t *testing.T, b []byte) map[string]string {
	t.Helper()
	fields := map[string]string{}
	var last string
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if strings.HasPrefix(line, " ") && last != "" {
			fields[last] += "\n" + strings.TrimSpace(line)
			continue
		}
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			t.Fatalf("control line %q is not a field", line)
		}
		if _, dup := fields[k]; dup {
			t.Fatalf("control field %s twice", k)
		}
		fields[k], last = strings.TrimSpace(v), k
	}
	return fields
}

func git(t *testing.T, args ...string) string {
	t.Helper()
	return strings.TrimSpace(run(t, "..", "git", args...))
}

// run runs a program and returns its standard output; a failure, with
// standard error, fails the test.
func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

// TestIPKEveryArch builds the package for every architecture ipk.sh
// knows besides the one TestIPK unpacks, and checks what differs between
// them: the control file's Architecture and the binary's CPU.
func TestIPKEveryArch(t *testing.T) {
	requireBuildTools(t)
	for _, tt := range []struct {
		arch    string
		class   elf.Class
		order   elf.Data
		machine elf.Machine
	}{
		{"mips_24kc", elf.ELFCLASS32, elf.ELFDATA2MSB, elf.EM_MIPS},
		{"aarch64_cortex-a53", elf.ELFCLASS64, elf.ELFDATA2LSB, elf.EM_AARCH64},
		{"arm_cortex-a7_neon-vfpv4", elf.ELFCLASS32, elf.ELFDATA2LSB, elf.EM_ARM},
		{"x86_64", elf.ELFCLASS64, elf.ELFDATA2LSB, elf.EM_X86_64},
	} {
		t.Run(tt.arch, func(t *testing.T) {
			path := buildIPK(t, tt.arch, t.TempDir())
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			outer, _ := readTarGz(t, b)
			data, _ := readTarGz(t, find(t, outer, "./data.tar.gz").body)
			control, _ := readTarGz(t, find(t, outer, "./control.tar.gz").body)
			if got := controlFields(t, find(t, control, "./control").body)["Architecture"]; got != tt.arch {
				t.Errorf("Architecture %q, want %q", got, tt.arch)
			}
			bin := find(t, data, "./usr/sbin/mcpagent").body
			f, err := elf.NewFile(bytes.NewReader(bin))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if f.Class != tt.class || f.Data != tt.order || f.Machine != tt.machine || f.Section(".symtab") != nil {
				t.Errorf("ELF %v %v %v (symbols %v), want %v %v %v stripped", f.Class, f.Data, f.Machine, f.Section(".symtab") != nil, tt.class, tt.order, tt.machine)
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
					t.Errorf("program header %v: not statically linked", p.Type)
				}
			}
			t.Logf("usr/sbin/mcpagent: %d bytes", len(bin))
			if len(bin) > maxBinarySize {
				t.Errorf("usr/sbin/mcpagent is %d bytes, more than %d", len(bin), maxBinarySize)
			}
		})
	}
}
