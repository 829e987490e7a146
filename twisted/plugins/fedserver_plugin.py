"""twistd plugin: ``twistd fedserver`` runs fedserver.service.makeService."""

from twisted.application.service import ServiceMaker

fedserver = ServiceMaker("fedserver", "fedserver.service", "A federating Matrix homeserver.", "fedserver")
