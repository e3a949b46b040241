# crust's AppArmor profile for containers that ask for the runtime default. A container keeps
# the network, files and capabilities its other settings give it; it may not mount, change
# its root, write kernel tunables, or read or write the kernel's memory and the host's
# firmware and security settings. crustd loads it (apparmor_parser) when first needed.
#include <tunables/global>

profile crust-default flags=(attach_disconnected,mediate_deleted) {
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,
  signal (receive) peer=unconfined,
  signal (send,receive) peer=crust-default,
  ptrace (trace,read,tracedby,readby) peer=crust-default,

  deny mount,
  deny pivot_root,

  deny @{PROC}/sys/** w,
  deny @{PROC}/{sysrq-trigger,kcore,kmem,mem,timer_list,keys} rwklx,
  deny /sys/{block,bus,class,dev,devices,kernel,module,power}/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
}
