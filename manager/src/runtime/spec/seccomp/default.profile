# crust's default seccomp profile: what a container gets for RuntimeDefault (and for the
# deprecated "runtime/default" and "docker/default"). Its rules are those of the default profile
# of moby and containerd's CRI plugin, which kubelet users expect.
#
# Format, one statement per line; `#` starts a comment, blank lines are ignored:
#
#   default <action>              what a syscall that no kept rule names gets
#   rule <action> [<term> ...]    starts a rule; its syscall names follow on indented lines
#
# <action> is allow, errno(<E>), kill-thread, kill-process, trap, log, notify or trace(<E>),
# where <E> is EPERM, ENOSYS or a number.
# Terms of a rule, all of which must hold for it to be in a container's filter:
#   caps=A,B           the container's bounding set has all of these (names without CAP_)
#   not-caps=A,B       ... has none of these
#   arch=a,b           the host's native architecture is one of these
#   not-arch=a,b       ... is none of these
#   min-kernel=M.N     the running kernel is at least M.N
#   kernel-below=M.N   the running kernel is older than M.N
# Terms on the syscall's arguments (argN is the N-th, from 0), all of which must hold for the
# action to apply:
#   argN==V  argN!=V  argN<V  argN<=V  argN>V  argN>=V    compare with V (decimal or 0x hex)
#   argN&M==V                                              the bits M of the argument equal V
# And one that only documents the names, for the test that checks them against syscall tables:
#   names-of=a,b       these names are syscalls of these architectures only, not of x86_64
#
# Architectures are named as seccomp does, lowercase: x86_64 x86 x32 aarch64 arm mips mipsel
# mips64 mips64n32 mipsel64 mipsel64n32 ppc ppc64 ppc64le s390 s390x riscv64 loongarch64.
# The filter covers the host's native architecture and its compat ABIs (x86_64 with x86 and
# x32, aarch64 with arm, s390x with s390, ...); the runtime skips the names an architecture
# does not have, so a rule may list names of several.

default errno(EPERM)

# What every container may do.
rule allow
    accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown
    clock_adjtime clock_getres clock_gettime clock_nanosleep close close_range connect
    copy_file_range creat dup dup2 dup3
    epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
    epoll_wait_old eventfd eventfd2 execve execveat exit exit_group
    faccessat faccessat2 fadvise64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2
    fchown fchownat fcntl fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr
    fstat fstatfs fsync ftruncate futex futex_requeue futex_wait futex_waitv futex_wake
    futimesat
    getcpu getcwd getdents getdents64 getegid geteuid getgid getgroups getitimer getpeername
    getpgid getpgrp getpid getppid getpriority getrandom getresgid getresuid getrlimit
    get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid
    gettimeofday getuid getxattr getxattrat
    inotify_add_watch inotify_init inotify_init1 inotify_rm_watch
    io_cancel ioctl io_destroy io_getevents io_pgetevents ioprio_get ioprio_set io_setup
    io_submit kill landlock_add_rule landlock_create_ruleset landlock_restrict_self
    lchown lgetxattr link linkat listen listmount listxattr listxattrat llistxattr
    lremovexattr lseek lsetxattr lstat
    madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod
    mknodat mlock mlock2 mlockall mmap mprotect mq_getsetattr mq_notify mq_open
    mq_timedreceive mq_timedsend mq_unlink mremap mseal msgctl msgget msgrcv msgsnd msync
    munlock munlockall munmap
    name_to_handle_at nanosleep newfstatat open openat openat2 pause pidfd_open
    pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll prctl pread64
    preadv preadv2 prlimit64 process_mrelease pselect6 pwrite64 pwritev pwritev2
    read readahead readlink readlinkat readv recvfrom recvmmsg recvmsg remap_file_pages
    removexattr removexattrat rename renameat renameat2 restart_syscall rmdir rseq
    rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
    rt_sigtimedwait rt_tgsigqueueinfo
    sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
    sched_get_priority_min sched_getscheduler sched_rr_get_interval sched_setaffinity
    sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl semget
    semop semtimedop sendfile sendmmsg sendmsg sendto setfsgid setfsuid setgid setgroups
    setitimer setpgid setpriority setregid setresgid setresuid setreuid setrlimit
    set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setxattr
    setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 socketpair
    splice stat statfs statmount statx symlink symlinkat sync sync_file_range syncfs sysinfo
    tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_settime
    timerfd_create timerfd_gettime timerfd_settime times tkill truncate umask uname unlink
    unlinkat uretprobe utime utimensat utimes vfork vmsplice wait4 waitid write writev

# The same for 32-bit ABIs: their 64-bit time variants (the year-2038 calls) ...
rule allow names-of=x86,arm,mips,ppc
    clock_adjtime64 clock_getres_time64 clock_gettime64 clock_nanosleep_time64 futex_time64
    io_pgetevents_time64 mq_timedreceive_time64 mq_timedsend_time64 ppoll_time64
    pselect6_time64 recvmmsg_time64 rt_sigtimedwait_time64 sched_rr_get_interval_time64
    semtimedop_time64 timer_gettime64 timer_settime64 timerfd_gettime64 timerfd_settime64
    utimensat_time64

# ... their 32-bit user and group id variants ...
rule allow names-of=x86,arm
    chown32 fchown32 getegid32 geteuid32 getgid32 getgroups32 getresgid32 getresuid32
    getuid32 lchown32 setfsgid32 setfsuid32 setgid32 setgroups32 setregid32 setresgid32
    setresuid32 setreuid32 setuid32

# ... their large-file variants and older entry points.
rule allow names-of=x86,arm,mips,ppc,ppc64le,s390x
    _llseek _newselect fadvise64_64 fcntl64 fstat64 fstatat64 fstatfs64 ftruncate64 ipc
    lstat64 mmap2 recv send sendfile64 sigprocmask sigreturn socketcall stat64 statfs64
    truncate64 ugetrlimit waitpid

rule allow names-of=riscv64
    riscv_hwprobe

# Before 4.8 a seccomp filter could be bypassed with ptrace, so only later kernels allow it.
rule allow min-kernel=4.8
    process_vm_readv process_vm_writev ptrace

# socket(2) for every address family but AF_ALG (38) and AF_VSOCK (40): the kernel's crypto
# API and host-guest sockets. (32-bit x86 reaches socket through socketcall, allowed above.)
rule allow arg0<38
    socket
rule allow arg0==39
    socket
rule allow arg0>40
    socket

# personality(2) only for the Linux personality (0), with UNAME26 (0x0008), with
# ADDR_NO_RANDOMIZE (0x20000), with both, and to query it (0xffffffff).
rule allow arg0==0x0
    personality
rule allow arg0==0x0008
    personality
rule allow arg0==0x20000
    personality
rule allow arg0==0x20008
    personality
rule allow arg0==0xffffffff
    personality

# Calls of one architecture.
rule allow arch=ppc64le
    sync_file_range2 swapcontext
rule allow arch=arm,aarch64
    arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls
rule allow arch=x86_64,x32
    arch_prctl
rule allow arch=x86_64,x32,x86
    modify_ldt
rule allow arch=s390,s390x
    s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr
rule allow arch=riscv64
    riscv_flush_icache

# Calls a capability grants.
rule allow caps=DAC_READ_SEARCH
    open_by_handle_at
rule allow caps=SYS_ADMIN
    bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie
    lsm_get_self_attr lsm_list_modules lsm_set_self_attr mount mount_setattr move_mount
    open_tree perf_event_open quotactl quotactl_fd setdomainname sethostname setns syslog
    umount umount2 unshare

# Without SYS_ADMIN, clone(2) only without the flags that make namespaces:
# CLONE_NEWNS 0x20000 | CLONE_NEWCGROUP 0x2000000 | CLONE_NEWUTS 0x4000000 |
# CLONE_NEWIPC 0x8000000 | CLONE_NEWUSER 0x10000000 | CLONE_NEWPID 0x20000000 |
# CLONE_NEWNET 0x40000000 = 0x7e020000. The flags are clone's second argument on s390.
rule allow arg0&0x7e020000==0 not-caps=SYS_ADMIN not-arch=s390,s390x
    clone
rule allow arg1&0x7e020000==0 not-caps=SYS_ADMIN arch=s390,s390x
    clone

# clone3(2) passes its flags in memory, which a filter cannot read: without SYS_ADMIN it fails
# with ENOSYS, so that C libraries fall back to clone, whose flags the rule above checks.
rule errno(ENOSYS) not-caps=SYS_ADMIN
    clone3

rule allow caps=SYS_BOOT
    reboot
rule allow caps=SYS_CHROOT
    chroot
rule allow caps=SYS_MODULE
    delete_module init_module finit_module
rule allow caps=SYS_PACCT
    acct
rule allow caps=SYS_PTRACE
    kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace
rule allow caps=SYS_RAWIO
    iopl ioperm
rule allow caps=SYS_TIME
    settimeofday stime clock_settime clock_settime64
rule allow caps=SYS_TTY_CONFIG
    vhangup
rule allow caps=SYS_NICE
    get_mempolicy mbind set_mempolicy set_mempolicy_home_node
rule allow caps=SYSLOG
    syslog
rule allow caps=BPF
    bpf
rule allow caps=PERFMON
    perf_event_open
