// The Go peer in the data-path bench: net/http/httputil.ReverseProxy, what KEDA's HTTP
// interceptor and Knative's activator are built on. Standard library only (GOPATH mode,
// GO111MODULE=off): loadtest/run/goproxy.py builds it with Debian's golang-go.
package main

import (
	"flag"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve on")
	upstream := flag.String("upstream", "http://127.0.0.1:8000", "the app's base URL")
	flag.Parse()
	target, err := url.Parse(*upstream)
	if err != nil {
		log.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	// The default transport keeps 2 idle connections per host: at 256 client connections it
	// would open and close upstream connections all the time. Keep as many as nginx does.
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConns = 1024
	transport.MaxIdleConnsPerHost = 1024
	proxy.Transport = transport
	log.Fatal(http.ListenAndServe(*listen, proxy))
}
