package main

// front sits before the simulator's mux: it counts SOAP calls per method, reroutes the
// clone methods to the cloner object of the target VM (see clone.go), and serves the
// harness's own knobs under /forkproxy/.

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"sync"
	"time"
)

// The first element inside soapenv:Body names the method.
var methodRe = regexp.MustCompile(`<(?:[A-Za-z0-9_]+:)?Body[^>]*>\s*<(?:[A-Za-z0-9_]+:)?([A-Za-z0-9_]+)`)

// Methods answered by cloner (clone.go) instead of the simulator's VirtualMachine.
var rerouted = map[string]bool{"InstantClone_Task": true, "CloneVM_Task": true}

// The method's _this: <_this type="VirtualMachine">vm-42</_this> (group 1: type, 2: value).
var thisRe = regexp.MustCompile(`<(?:[A-Za-z0-9_]+:)?_this[^>]*type="(VirtualMachine)"[^>]*>([^<]+)<`)

type front struct {
	next http.Handler

	mu    sync.Mutex
	calls map[string]int64
}

func newFront(next http.Handler) *front {
	return &front{
		next:  next,
		calls: map[string]int64{},
	}
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/forkproxy/calls":
		f.serveCalls(w, r)
		return
	case "/forkproxy/guest-ip-delay":
		serveIPDelay(w, r)
		return
	case "/sdk", "/sdk/vimService":
	default:
		f.next.ServeHTTP(w, r)
		return
	}
	if r.Method != http.MethodPost {
		f.next.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))

	name := ""
	if m := methodRe.FindSubmatch(body); m != nil {
		name = string(m[1])
	}
	f.mu.Lock()
	f.calls[name]++
	f.mu.Unlock()

	if rerouted[name] {
		if m := thisRe.FindSubmatchIndex(body); m != nil {
			ensureCloner(string(body[m[4]:m[5]]))
			body = append(append(append([]byte{}, body[:m[2]]...), clonerType...), body[m[3]:]...)
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
			// Faults name the object they were raised on (e.g. NotAuthenticated.object):
			// that must be the VM again, a type clients know.
			rec := httptest.NewRecorder()
			f.next.ServeHTTP(rec, r)
			out := bytes.ReplaceAll(rec.Body.Bytes(), []byte(`type="`+clonerType+`"`), []byte(`type="VirtualMachine"`))
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.Header().Del("Content-Length")
			w.WriteHeader(rec.Code)
			_, _ = w.Write(out)
			return
		}
	}
	f.next.ServeHTTP(w, r)
}

// serveCalls: GET returns {"method": count}; POST or DELETE resets the counters.
func (f *front) serveCalls(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	out := make(map[string]int64, len(f.calls))
	for k, v := range f.calls {
		out[k] = v
	}
	if r.Method == http.MethodPost || r.Method == http.MethodDelete {
		f.calls = map[string]int64{}
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// serveIPDelay: POST ?ms=N makes clones report their guest IP N ms after the clone task
// completes (VMware Tools is not instant); GET shows the current value.
func serveIPDelay(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil || ms < 0 {
			http.Error(w, "ms must be a non-negative integer", http.StatusBadRequest)
			return
		}
		ipDelay.Store(int64(time.Duration(ms) * time.Millisecond))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]int64{"ms": guestIPDelay().Milliseconds()})
}
