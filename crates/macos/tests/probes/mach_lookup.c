/* Looks up each Mach service named on the command line, the way a copied or
 * re-implemented `security`, `open` or `osascript` would, so that the attack
 * suite tests the IPC denials themselves and not only the exec denial of those
 * binaries' names. Prints "NAME KERN_RETURN" per service and exits with the
 * number of services it could reach (0: none). Compiled by the attack suite with
 * the system's cc; macOS only. */
#include <mach/mach.h>
#include <servers/bootstrap.h>
#include <stdio.h>

int main(int argc, char **argv) {
    int reachable = 0;
    for (int i = 1; i < argc; i++) {
        mach_port_t port = MACH_PORT_NULL;
        kern_return_t kr = bootstrap_look_up(bootstrap_port, argv[i], &port);
        printf("%s %d\n", argv[i], kr);
        if (kr == KERN_SUCCESS) {
            reachable++;
            mach_port_deallocate(mach_task_self(), port);
        }
    }
    return reachable > 125 ? 125 : reachable;
}
