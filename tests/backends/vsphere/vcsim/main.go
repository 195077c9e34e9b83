// Command vcsim runs govmomi's vCenter simulator (Debian's golang-github-vmware-govmomi-dev,
// 0.24.2) for forkproxy's vsphere tests, with what that version lacks added in front of it:
// InstantClone_Task, a CloneVM_Task that honours powerOn and copies the source's extraConfig,
// per-method SOAP call counters (GET /forkproxy/calls; POST resets them) and a guest IP
// delay knob for benchmarks (POST /forkproxy/guest-ip-delay?ms=N).
//
// Build (GOPATH mode, no module download):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o tests/backends/vsphere/vcsim/vcsim ./tests/backends/vsphere/vcsim
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: any free port)")
	certFile := flag.String("tls-cert", "", "TLS certificate (PEM); empty: plain http")
	keyFile := flag.String("tls-key", "", "TLS private key (PEM)")
	user := flag.String("username", "forkproxy", "the only user that may log in")
	password := flag.String("password", "", "that user's password (required)")
	envFile := flag.String("env-file", "", "write url/user/password/ca facts here once listening")
	busybox := flag.String("busybox", "forkproxy-test/httpd:latest",
		"local image with a busybox tar, used for the container VMs' DMI volume (VCSIM_BUSYBOX)")
	trace := flag.Bool("trace", false, "log every SOAP request and response")
	flag.Parse()

	if *password == "" {
		log.Fatal("vcsim: -password is required")
	}
	if os.Getenv("VCSIM_BUSYBOX") == "" {
		// container.go pulls "busybox" otherwise; no registry is reachable here.
		_ = os.Setenv("VCSIM_BUSYBOX", *busybox)
	}
	simulator.Trace = *trace
	useDockerShim()

	model := simulator.VPX()
	// 0.24.2 announces API 6.5, so clients refuse to send InstantClone_Task (added in 6.7);
	// "7.0.0.0" is how vCenter 7.0 spells it in vimServiceVersions.xml.
	model.ServiceContent.About.ApiVersion = "7.0.0.0"
	model.ServiceContent.About.Version = "7.0.0"
	model.ServiceContent.About.FullName = "VMware vCenter Server 7.0.0 (govmomi 0.24.2 vcsim + forkproxy harness)"
	if err := model.Create(); err != nil {
		log.Fatalf("vcsim: create model: %s", err)
	}

	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, *password)}
	if *certFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			log.Fatalf("vcsim: load TLS pair: %s", err)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	}

	server := model.Service.NewServer()
	// NewServer owns the mux and has already started serving it; requests read
	// Config.Handler per request, and nobody knows the URL before we print it.
	front := newFront(server.Server.Config.Handler)
	server.Server.Config.Handler = front

	u := *server.URL
	u.User = nil
	log.Printf("vcsim: listening on %s (user %s)", u.String(), *user)
	if *envFile != "" {
		facts := fmt.Sprintf("FORKPROXY_VCSIM_URL=%s\nFORKPROXY_VCSIM_HOST=%s\nFORKPROXY_VCSIM_PORT=%s\n"+
			"FORKPROXY_VCSIM_USER=%s\nFORKPROXY_VCSIM_PASSWORD=%s\nFORKPROXY_VCSIM_CA_FILE=%s\n"+
			"FORKPROXY_VCSIM_PID=%d\n",
			u.String(), u.Hostname(), u.Port(), *user, *password, *certFile, os.Getpid())
		tmp := *envFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(facts), 0o600); err != nil {
			log.Fatalf("vcsim: write env file: %s", err)
		}
		if err := os.Rename(tmp, *envFile); err != nil {
			log.Fatalf("vcsim: write env file: %s", err)
		}
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	log.Printf("vcsim: shutting down, removing VM containers")
	server.Close()
	model.Remove() // removes the docker containers backing VMs
}

// useDockerShim puts shim/docker (next to this binary) first on PATH when the host has
// no DMI, so the simulator's container VMs can start (see shim/docker).
func useDockerShim() {
	if _, err := os.Stat("/sys/class/dmi/id"); err == nil {
		return
	}
	real, err := exec.LookPath("docker")
	if err != nil {
		log.Printf("vcsim: no docker on PATH: container-backed VMs will not start")
		return
	}
	exe, err := os.Executable()
	if err != nil {
		log.Fatalf("vcsim: %s", err)
	}
	dir := filepath.Join(filepath.Dir(exe), "shim")
	if _, err := os.Stat(filepath.Join(dir, "docker")); err != nil {
		log.Fatalf("vcsim: host has no /sys/class/dmi and %s/docker is missing", dir)
	}
	_ = os.Setenv("FORKPROXY_REAL_DOCKER", real)
	_ = os.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	log.Printf("vcsim: host has no DMI; container VMs use %s/docker", dir)
}
