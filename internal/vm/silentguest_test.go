package vm

import (
	"context"
	"net"
)

// silentGuest dials an agent channel to a guest that reads everything it
// is sent (whole frames included) and never answers.
func silentGuest(context.Context) (net.Conn, error) {
	host, guest := net.Pipe()
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := guest.Read(buf); err != nil {
				return
			}
		}
	}()
	return host, nil
}

// SilentGuest is silentGuest for the tests of package vm_test.
var SilentGuest = silentGuest
