import BackupCatalog
import BackupWire

/// The handlers of an environment's schedule.
extension BackupsService {
    func registerSchedules(into router: inout RPCRouter) {
        router.unary(Backups.getSchedule) { request, context in
            let namespace = try context.namespace(request.namespace)
            try context.authorize(.viewer, in: namespace)
            return try await catalog.schedule(namespace: namespace, environment: request.environment)
        }
        router.unary(Backups.setSchedule) { request, context in
            var wanted = request.schedule
            wanted.namespace = try context.namespace(wanted.namespace)
            try context.authorize(.admin, in: wanted.namespace)
            let schedule = try await catalog.setSchedule(wanted, applyToExisting: request.applyToExisting,
                                                         actor: context.caller.tokenName)
            // Re-dated backups may have expired already.
            if schedule.backupsRedated > 0 { scheduler.wake() }
            return schedule
        }
    }
}
