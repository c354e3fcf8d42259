package main

import "syscall"

// sysProcAttr puts a child in its own process group (so a Ctrl-C in the
// terminal reaches only the stack, which stops the children in order) and
// has the kernel send it SIGTERM should the stack die without stopping it.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
