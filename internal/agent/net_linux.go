package agent

import (
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// QEMU user-networking (slirp) addresses.
var (
	guestIP    = [4]byte{10, 0, 2, 15}
	guestMask  = [4]byte{255, 255, 255, 0}
	gatewayIP  = [4]byte{10, 0, 2, 2}
	nameserver = "10.0.2.3"
)

const nicWait = 3 * time.Second

// setupNetwork brings lo up and, when withNIC, configures eth0 for QEMU user
// networking with ioctls (the image has no tools we could rely on).
func setupNetwork(withNIC bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("network socket: %w", err)
	}
	defer unix.Close(fd)
	if err := ifUp(fd, "lo"); err != nil {
		return err
	}
	if !withNIC {
		return nil
	}
	deadline := time.Now().Add(nicWait)
	for {
		if _, err := os.Stat("/sys/class/net/eth0"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("network interface eth0 did not appear within %s (is virtio_net loaded and a NIC attached?)", nicWait)
		}
		time.Sleep(2 * time.Millisecond)
	}
	for _, a := range []struct {
		req  uint
		addr [4]byte
		what string
	}{
		{unix.SIOCSIFADDR, guestIP, "address"},
		{unix.SIOCSIFNETMASK, guestMask, "netmask"},
	} {
		ifr, err := unix.NewIfreq("eth0")
		if err != nil {
			return err
		}
		if err := ifr.SetInet4Addr(a.addr[:]); err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, a.req, ifr); err != nil {
			return fmt.Errorf("set eth0 %s: %w", a.what, err)
		}
	}
	if err := ifUp(fd, "eth0"); err != nil {
		return err
	}
	if err := addDefaultRoute(fd, gatewayIP); err != nil {
		return err
	}
	_ = os.Remove("/etc/resolv.conf") // may be a dangling symlink
	if err := os.WriteFile("/etc/resolv.conf", []byte("nameserver "+nameserver+"\n"), 0o644); err != nil {
		return fmt.Errorf("write /etc/resolv.conf: %w", err)
	}
	return nil
}

func ifUp(fd int, name string) error {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get %s flags: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP | unix.IFF_RUNNING)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	return nil
}

// rtentry is struct rtentry from <net/route.h> (LP64 layout).
type rtentry struct {
	pad1    uint64
	dst     unix.RawSockaddrInet4
	gateway unix.RawSockaddrInet4
	genmask unix.RawSockaddrInet4
	flags   uint16
	pad2    int16
	pad3    uint64
	pad4    uintptr
	metric  int16
	dev     *byte
	mtu     uint64
	window  uint64
	irtt    uint16
}

func addDefaultRoute(fd int, gw [4]byte) error {
	rt := rtentry{flags: unix.RTF_UP | unix.RTF_GATEWAY}
	rt.dst.Family = unix.AF_INET
	rt.genmask.Family = unix.AF_INET
	rt.gateway.Family = unix.AF_INET
	rt.gateway.Addr = gw
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCADDRT, uintptr(unsafe.Pointer(&rt))); e != 0 && e != unix.EEXIST {
		return fmt.Errorf("add default route: %w", e)
	}
	return nil
}
